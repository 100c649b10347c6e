"""The bundled photographs' names: torch-free, imported by the config (to check
``data.val_photos``) and by the data preparation (which crops them)."""

# The 12 real RGB photographs shipped inside the wheels, in a fixed (alphabetical) order.
# skimage.data's other colour images are synthetic (colorwheel, logo) or aliases (cat ==
# chelsea); its remaining photos (lily, skin, ...) need a download through pooch.
BUNDLED_PHOTOS = (
    "astronaut",  # skimage, 512x512
    "chelsea",  # skimage, 300x451, a cat
    "china",  # sklearn load_sample_image, 427x640
    "coffee",  # skimage, 400x600
    "flower",  # sklearn load_sample_image, 427x640
    "grace_hopper",  # matplotlib sample_data, 600x512
    "hubble_deep_field",  # skimage, 872x1000, telescope
    "immunohistochemistry",  # skimage, 512x512, microscope
    "motorcycle_left",  # skimage stereo_motorcycle, 500x741 (stereo pair)
    "motorcycle_right",  # skimage stereo_motorcycle, 500x741
    "retina",  # skimage, 1411x1411, fundus camera
    "rocket",  # skimage, 427x640
)
# Near-duplicates: whole-photo validation holds out both or neither; the region split keeps
# the right view's training columns clear of the left view's held-out strip (data.py).
STEREO_PAIR = ("motorcycle_left", "motorcycle_right")
