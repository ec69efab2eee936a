"""What trains: every trainable parameter takes part in the loss (DDP without `find_unused_parameters`
fails at the second step otherwise), and weights the video path never uses never train."""

import pytest

from conftest import FAMILIES
from tpo.data.datamodule import PreferenceDataModule
from tpo.models import PARTS, UNUSED, get_adapter
from tpo.module import TPOModule


@pytest.mark.parametrize("family", FAMILIES)
def test_every_trainable_parameter_gets_a_gradient(family, pref_file):
    module = TPOModule(f"builtin:tiny-{family}", family)
    module.configure_model()
    dm = PreferenceDataModule(str(pref_file), batch_size=2)
    dm.connect(module)
    dm.setup("fit")
    module.compute_loss(dm.collator([dm.train_set[0], dm.train_set[1]]))["loss"].backward()
    unused = [name for name, p in module.policy.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, f"{family}: trainable but not in the loss: {unused}"


def test_llava_next_video_never_trains_its_image_newline_and_onevision_does():
    next_video = TPOModule("builtin:tiny-llava_next_video", "llava_next_video", trainable=PARTS)
    next_video.configure_model()
    assert next_video.adapter.part_of("model.image_newline") == UNUSED
    assert not next_video.policy.model.image_newline.requires_grad
    assert all(p.requires_grad for n, p in next_video.policy.named_parameters() if n != "model.image_newline")
    onevision = TPOModule("builtin:tiny-llava_onevision", "llava_onevision")
    onevision.configure_model()
    assert onevision.policy.model.image_newline.requires_grad  # OneVision appends it after each video


def test_gemma4_audio_weights_are_unused_by_video():
    adapter = get_adapter("gemma4")
    for name in ("model.audio_tower.layers.0.weight", "model.embed_audio.embedding_projection.weight"):
        assert adapter.part_of(name) == UNUSED
    assert adapter.part_of("model.vision_tower.encoder.layers.0.mlp.weight") == "vision_tower"


def test_unused_is_not_a_part_to_train():
    module = TPOModule("builtin:tiny-llava_next_video", "llava_next_video", trainable=(UNUSED,))
    with pytest.raises(ValueError, match="unknown trainable part"):
        module.configure_model()
