"""The HTNet picture's strain channel against flow fields whose optical strain is known in closed form.

Optical strain (STSTNet's third channel, au_annotate.flow.optical_strain) is sqrt(ux^2 + vy^2 + (uy + vx)^2 / 2): the
shear term adds the two cross derivatives. The fields here have derivatives that are linear in x and y, so NumPy's
central (inside) and one-sided (border) differences are exact and every pixel's expected value is a formula.
"""

from __future__ import annotations

import numpy as np

from au_annotate.flow import PICTURE_SIZE, encode_uv_strain, optical_strain

N = PICTURE_SIZE
Y, X = np.mgrid[0:N, 0:N].astype(np.float64)  # row = y, column = x, unit pixel spacing


def test_pure_shear_and_pure_rotation_have_their_closed_form_strain() -> None:
    """u = a*y, v = 0 (simple shear): strain |a|/sqrt(2) everywhere; u = -w*y, v = w*x (rigid rotation): no strain,
    since the cross derivatives cancel (uy + vx = -w + w); a difference uy - vx would read sqrt(2)*|w| there."""
    a, w = 0.6, 0.25
    shear = optical_strain(a * Y, np.zeros_like(Y))
    np.testing.assert_allclose(shear, abs(a) / np.sqrt(2), rtol=0, atol=1e-12)
    rotation = optical_strain(-w * Y, w * X)
    np.testing.assert_allclose(rotation, 0.0, rtol=0, atol=1e-12)


def test_strain_channel_pixel_exact_on_a_bilinear_flow() -> None:
    """u = a*x*y, v = b*x*y: ux = a*y, vy = b*x, uy + vx = a*x + b*y, so strain = sqrt((a*y)^2 + (b*x)^2 +
    (a*x + b*y)^2 / 2); the picture's blue channel is that min-max scaled to 0..255 and rounded, red and green are
    u and v scaled the same way (a 28x28 flow is not resized)."""
    a, b = 0.02, 0.01
    flow = np.stack([a * X * Y, b * X * Y], axis=-1).astype(np.float32)
    pic = encode_uv_strain(flow)
    strain = np.sqrt((a * Y) ** 2 + (b * X) ** 2 + 0.5 * (a * X + b * Y) ** 2)
    want = np.round(255 * (strain - strain.min()) / (strain.max() - strain.min())).astype(np.uint8)
    np.testing.assert_array_equal(pic[..., 2], want)
    uv = np.round(255 * X * Y / ((N - 1) ** 2)).astype(np.uint8)  # a*x*y and b*x*y: 0 at (0, 0), largest at (27, 27)
    np.testing.assert_array_equal(pic[..., 0], uv)
    np.testing.assert_array_equal(pic[..., 1], uv)


def test_product_tvl1_agrees_with_opencv_defaults_on_a_real_face() -> None:
    """`--tvl1 fast` (flow.FAST_TVL1: a 112 px square, 3 scales, 1 warp, 5 x 10 iterations) gives the picture
    OpenCV's defaults (the default, `exact`) give on a smooth deformation of a real face (skimage's astronaut): same
    channels to r > 0.9, and the flow is computed on the 112 px square."""
    import cv2
    from skimage import data

    from au_annotate.flow import FAST_TVL1, OPENCV_TVL1, PRODUCT_TVL1, htnet_picture, picture_for, tvl1_flow

    face = cv2.cvtColor(data.astronaut()[20:244, 140:364], cv2.COLOR_RGB2GRAY)  # 224 x 224 around the face
    yy, xx = np.mgrid[0:224, 0:224].astype(np.float32)
    bump = np.exp(-((xx - 112) ** 2 + (yy - 90) ** 2) / (2 * 25.0**2))  # a brow-like local raise
    moved = cv2.remap(face, xx + 2.0 * bump, yy + 3.0 * bump, cv2.INTER_LINEAR)  # u and v both carry the movement
    assert PRODUCT_TVL1 == OPENCV_TVL1  # the default stays OpenCV's defaults (docs/au-model.md, "TV-L1 cost")
    assert FAST_TVL1.side == 112 and tvl1_flow(face[:150, :150], moved[:150, :150], FAST_TVL1).shape == (112, 112, 2)
    fast = picture_for("face:htnet-uvs", face, moved, None, "fast").astype(float)
    slow = picture_for("face:htnet-uvs", face, moved, None).astype(float)
    assert np.array_equal(slow, htnet_picture(face, moved))
    for c in range(3):
        assert np.corrcoef(fast[..., c].ravel(), slow[..., c].ravel())[0, 1] > 0.9, c
