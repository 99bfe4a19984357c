"""COCO-Stuff-171: the COCO-Stuff-27 images, layout and curated lists, scored on the 171 fine classes.

The classes are the stuffthingmaps fine ids that occur (80 things and 91 stuff; fine ids 11, 25,
28, 29, 44, 65, 67, 68, 70, 82 and 90 never do), renumbered 0..170 in increasing order, with the
names of COCO-Stuff's labels.md (github.com/nightrome/cocostuff). Both are shipped as data in
cocostuff171.json; 255 is ignored and any other value is a data error naming the file.
"""

from data.cocostuff import PACKAGE_DIR, CocoStuffSpec
from data.spec import distinct_palette

LABEL_MAP_FILE = PACKAGE_DIR / "cocostuff171.json"


class CocoStuff171Spec(CocoStuffSpec):
    # 171 classes have no natural colours: evenly spread ones, never black (the ignore colour).
    palette = distinct_palette(171)


COCOSTUFF171 = CocoStuff171Spec(
    "cocostuff171", LABEL_MAP_FILE, "COCO-Stuff-171: the 171 fine classes (80 things, 91 stuff) of the curated lists"
)
