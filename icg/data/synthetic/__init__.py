"""Synthetic pedestrians in the Market-1501 layout, with ground-truth part masks.

No real re-ID dataset can be downloaded in a test run or a CPU demo, so this package draws one. The images are
meant to make re-ID learnable but not trivial, in the ways that matter for ICG:

* **Colour alone is not enough.** Identity-level colours come from small palettes, so every shirt colour is
  worn by many identities, and a fraction of the identities come in *colour-swapped pairs*: the partner wears
  the first one's trousers colour on top and its shirt colour below, with the same skin, hair, shoes and bag.
  A globally pooled colour histogram cannot tell such a pair apart; where each colour sits (the parts) can.
* **A clear foreground.** The person is drawn over a camera-specific backdrop (wall, ground, texture) with
  clutter rectangles, some of them in the same palette as the clothes.
* **Realistic nuisances, drawn per image:** misalignment (the person shifted and scaled inside the box), view
  (front, back, left or right profile; a backpack is a pack from behind and two straps from the front, a jacket
  shows the shirt under it only from the front), pose (leg spread, arm swing), a per-camera colour cast and a
  per-image brightness, blur and sensor noise, and, with some probability, an occluder (a car across the bottom,
  a pole, or a passer-by entering from one side). The gallery also holds distractors (id 0, people seen only
  once) and junk (id -1, badly framed detections: a person far too large or too small for the box).

The arguments of a generation are one frozen, checked :class:`SyntheticSpec` (:mod:`.spec`), and the work is
done in three steps, one module each:

* :mod:`.plan` -- :func:`plan_images` settles every file (split, name, id, camera, appearance, nuisance
  parameters) from the seed alone without drawing, so a DataModule can count the training images and ids up front;
* :mod:`.draw` -- :func:`render_synthetic` draws one planned image and its part mask;
* :mod:`.write` -- :func:`write_synthetic` draws the plan and writes, under ``root``::

    bounding_box_train/0002_c1s1_000451_03.jpg ...   training identities (disjoint from the test ones)
    query/...                                          one image per (test identity, camera), a couple of cameras
    bounding_box_test/...                              the other test images, distractors (0000_...), junk (-1_...)
    part_masks/<one of the three folders>/<stem>.png   per-pixel part labels (see PartLabel)
    synthetic.json                                     the arguments, written last

Every query has a gallery image of its identity from another camera. Part masks are uint8 PNGs with the ids of
:class:`PartLabel`; occluded pixels are background, so masks say what is *visible*. Masks are drawn with the same
shapes as the image, so they align exactly (before the image's JPEG compression and blur).

:func:`plan_synthetic` and :func:`generate_synthetic` take the spec's fields as keywords instead.

Generation is deterministic (same arguments, same numpy and Pillow, byte-identical files), atomic (drawn into a
hidden sibling folder that is renamed into place when complete; concurrent calls with the same arguments, e.g.
from several DDP ranks, all return the one finished folder) and idempotent (a complete generation with the same
arguments is reused; anything else at ``root`` is an error, never deleted). An exception or Ctrl-C removes the
staging folder; a process killed outright leaves its hidden ``.<root name>.partial-<pid>@<host>-*`` sibling
behind, which never becomes ``root`` and is removed by the next call for the same ``root`` (see
:func:`icg.files.remove_orphans`). Files and folders follow the umask.
"""

from icg.data.synthetic.draw import PART_LABELS, PartLabel, render_synthetic
from icg.data.synthetic.plan import (
    MASK_FOLDER,
    SPLIT_FOLDERS,
    Appearance,
    CameraScene,
    SyntheticImage,
    plan_images,
    plan_synthetic,
)
from icg.data.synthetic.spec import SyntheticSpec
from icg.data.synthetic.write import METADATA_FILE, generate_synthetic, write_synthetic

__all__ = [
    "MASK_FOLDER",
    "METADATA_FILE",
    "PART_LABELS",
    "SPLIT_FOLDERS",
    "Appearance",
    "CameraScene",
    "PartLabel",
    "SyntheticImage",
    "SyntheticSpec",
    "generate_synthetic",
    "plan_images",
    "plan_synthetic",
    "render_synthetic",
    "write_synthetic",
]
