import torch

from mtl.data.augment import Preprocess, TrainAugment


def images(b=4, h=12, w=12, c=3):
    return torch.randint(0, 256, (b, h, w, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_preprocess_normalises_like_the_formula():
    x = images()
    pre = Preprocess(12, 3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5])
    out = pre(x)
    ref = (
        x.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    ) / torch.tensor([0.2, 0.25, 0.5]).view(1, 3, 1, 1)
    assert out.shape == (4, 3, 12, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref)


def test_preprocess_resizes_and_converts_channels():
    assert Preprocess(8, 3)(images(c=1)).shape == (4, 3, 8, 8)
    grey = Preprocess(12, 1, mean=[0.0], std=[1.0])(images())
    torch.testing.assert_close(grey[:, 0], images().float().mean(-1) / 255)


def test_full_crop_without_flip_is_the_identity():
    pre = Preprocess(12, 3)
    aug = TrainAugment(pre, scale=(1.0, 1.0), flip=False, generator=torch.Generator().manual_seed(0))
    # area 1 is the whole image whatever aspect ratio was drawn
    torch.testing.assert_close(aug(images()), pre(images()), atol=1e-5, rtol=0)


def test_augmentation_is_per_image_and_seeded():
    x = images(b=1).expand(16, -1, -1, -1)
    aug = TrainAugment(
        Preprocess(12, 3), scale=(0.3, 1.0), flip=True, generator=torch.Generator().manual_seed(1)
    )
    out = aug(x)
    assert out.shape == (16, 3, 12, 12)
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) == 16  # every image got its own crop
    again = TrainAugment(
        Preprocess(12, 3), scale=(0.3, 1.0), flip=True, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(again(x), out)


def test_flip_mirrors_the_image():
    pre = Preprocess(12, 3)
    gen = torch.Generator().manual_seed(0)
    aug = TrainAugment(pre, scale=(1.0, 1.0), flip=True, generator=gen)
    x = images(b=32)
    out, plain = aug(x), pre(x)
    flipped = torch.isclose(out, plain.flip(-1), atol=1e-5).flatten(1).all(1)
    same = torch.isclose(out, plain, atol=1e-5).flatten(1).all(1)
    assert (flipped | same).all() and flipped.any() and same.any()


def test_resize_then_centre_crop_is_the_official_evaluation_transform():
    from torchvision.transforms import v2

    x = images(b=3, h=84, w=84)
    pre = Preprocess(80, 3, mean=[0.0] * 3, std=[1.0] * 3, resize=92)
    official = v2.Compose([v2.Resize(92, antialias=True), v2.CenterCrop(80)])
    ref = official(x.permute(0, 3, 1, 2).float() / 255)
    out = pre(x)
    assert out.shape == (3, 3, 80, 80)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # Training augmentation crops the whole image to the model size: no second resize and crop.
    aug = TrainAugment(pre, scale=(1.0, 1.0), flip=False, generator=torch.Generator().manual_seed(0))
    assert aug(x).shape == (3, 3, 80, 80)
