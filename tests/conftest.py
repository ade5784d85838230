import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


def ring_image(size: int = 128, radius: float = 40.0) -> torch.Tensor:
    """A thin bright ring: nothing but curved edges, (1, 1, S, S)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    r = torch.sqrt((yy - size / 2) ** 2 + (xx - size / 2) ** 2)
    return torch.exp(-((r - radius) ** 2) / 2)[None, None]


def blob_image(size: int, centre: tuple[float, float], sigma: float = 2.5) -> torch.Tensor:
    """One bright Gaussian blob at (y, x) on black, (1, 1, S, S)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    d2 = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))[None, None]


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


def failure_of(result) -> str:
    """What a failed subprocess (torchrun included) said: its first traceback, else its stderr's end."""
    err = result.stderr
    start = err.find("Traceback")
    return err[start : start + 4000] if start >= 0 else err[-2000:]
