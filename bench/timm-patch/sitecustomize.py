# Python runs this at start-up when its directory is on PYTHONPATH. bench/compare_finetune.sh puts
# it there for the vit-s4-32 case: timm registers no patch-4 ViT-S, so every timm.create_model
# call gets patch_size=$TIMM_PATCH_SIZE (timm's ViT takes it as a keyword). The PyTorch yardstick
# itself is unchanged, and the subprocess it starts per method inherits the environment.
import os

if os.environ.get("TIMM_PATCH_SIZE"):
    import timm

    _create_model = timm.create_model

    def create_model(*args, **kwargs):
        kwargs.setdefault("patch_size", int(os.environ["TIMM_PATCH_SIZE"]))
        return _create_model(*args, **kwargs)

    timm.create_model = create_model
