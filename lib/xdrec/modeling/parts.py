"""Names of the :class:`~xdrec.modeling.model.TwoTower`'s parts, importable without torch (the config
validates against them)."""

# User bridges of the bridge_* methods (TwoTower's ``bridge``); "none" for the other methods.
BRIDGES = ("none", "emcdr", "ptupcdr")
# How a user becomes a vector (TwoTower's ``user_encoder``): an embedding per user, or the pooled embeddings
# of the items in the user's training history.
USER_ENCODERS = ("embedding", "history")
# Parts that a training phase can freeze or give its own learning rate: module paths in TwoTower.
PARTS = ("user_embedding", "history_embedding", "user_tower", "user_tower.mlp.0", "user_tower.mlp.2",
         "item_embedding", "item_tower", "item_tower.mlp.0", "item_tower.mlp.2", "item_bias",
         "text_projection", "target_user_embedding", "bridge", "domain_classifier")
