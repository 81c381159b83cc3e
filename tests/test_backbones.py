import pytest

from trainables.backbones import BACKBONES, application_name, input_resolution


def test_native_resolutions_follow_the_recipe():
    sizes = [input_resolution(b) for b in BACKBONES]
    assert sizes == [224, 240, 260, 300, 380, 456, 528, 600]
    assert input_resolution("B3", override=32) == 32
    assert application_name("B7") == "EfficientNetB7"


def test_unknown_backbone():
    with pytest.raises(ValueError, match="backbone must be one of"):
        input_resolution("B8")
