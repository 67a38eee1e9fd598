"""Self-supervised image features: the backbone registry and the cached, resumable extraction."""
from cedm.features.backbones import (DEFAULT_BACKBONE, OFFLINE_BACKBONE, BackboneSpec, ImageNetClassifier,
                                     build_backbone, get_spec, imagenet_class_names, list_backbones,
                                     load_imagenet_classifier, register, weights_identity)
from cedm.features.extract import (Backbone, export_features, extract_one, feature_params, features_artifact,
                                   find_features, get_features, l2_normalize, list_features)

__all__ = ["DEFAULT_BACKBONE", "OFFLINE_BACKBONE", "Backbone", "BackboneSpec", "ImageNetClassifier",
           "build_backbone", "export_features", "extract_one", "feature_params", "features_artifact",
           "find_features", "get_features", "get_spec", "imagenet_class_names", "l2_normalize",
           "list_backbones", "list_features", "load_imagenet_classifier", "register", "weights_identity"]
