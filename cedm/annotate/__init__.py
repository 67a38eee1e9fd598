"""Self-annotations from a backbone's spatial features (seed 003): a self-box and a self-segment map per image.

``patches`` (spatial features from the backbone registry), ``boxes`` (LOST-style seed and expansion),
``segments`` (dataset-wide k-means of patch features, colour-guided refinement), ``store`` (workspace
artifacts), ``export`` (PNG masks and a box CSV), ``metrics`` (layout IoU). See docs/spatial.md.
"""
