"""Bringing images into a workspace: decoding, conversion to square RGB, and import from many sources."""
