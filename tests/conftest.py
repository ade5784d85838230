import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Two class folders of sample photos and one corrupt file."""
    from PIL import Image

    from captum_sift.data import load_sample_photo

    root = tmp_path_factory.mktemp("images")
    for cls, names in (("a", ["astronaut", "coffee", "rocket"]), ("b", ["chelsea", "camera", "coins"])):
        (root / cls).mkdir()
        for name in names:
            Image.fromarray(load_sample_photo(name)).save(root / cls / f"{name}.png")
    (root / "b" / "broken.jpg").write_bytes(b"not an image")
    return root
