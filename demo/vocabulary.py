"""The words and values the synthetic world is made of: garment types, colours, patterns, styles,
stores, and the wording of titles, features and reviews.

Only data lives here; `demo.world` draws from these tables by index, `demo.text` fills the templates
(placeholders: {noun}, {plural}, {colour}, {pattern}, {style}, {material}). Changing a table or its
order changes every generated world.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Garment:
    """A garment type: one of the 10 Fashion-MNIST classes, with what its text and price draw from."""

    key: str
    noun: str  # singular, lower case
    plural: str
    fmnist_label: int  # Fashion-MNIST class id
    kind: str  # "clothes" | "shoes" | "bag"
    path: tuple[str, ...]  # Amazon category path
    materials: tuple[str, ...]
    price: tuple[float, float]
    departments: tuple[str, ...]
    extra_features: tuple[str, ...]


GARMENTS: tuple[Garment, ...] = (
    Garment(
        "tshirt",
        "t-shirt",
        "t-shirts",
        0,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Tops & Tees", "T-Shirts"),
        ("cotton", "jersey", "bamboo"),
        (9.0, 32.0),
        ("Women", "Men", "Unisex"),
        ("Crew neck", "Short sleeves", "Relaxed fit"),
    ),
    Garment(
        "trousers",
        "trousers",
        "trousers",
        1,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Pants", "Casual"),
        ("cotton twill", "linen", "wool blend", "denim"),
        (19.0, 65.0),
        ("Women", "Men"),
        ("Mid rise", "Zip fly with button closure", "Two side pockets"),
    ),
    Garment(
        "pullover",
        "sweater",
        "sweaters",
        2,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Sweaters", "Pullovers"),
        ("wool", "cotton knit", "cashmere blend"),
        (24.0, 85.0),
        ("Women", "Men", "Unisex"),
        ("Ribbed cuffs and hem", "Long sleeves", "Crew neck"),
    ),
    Garment(
        "dress",
        "dress",
        "dresses",
        3,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Dresses", "Casual"),
        ("cotton", "chiffon", "linen", "satin"),
        (22.0, 95.0),
        ("Women",),
        ("Sleeveless", "Fitted waist", "Midi length"),
    ),
    Garment(
        "coat",
        "coat",
        "coats",
        4,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Coats, Jackets & Vests", "Wool & Blends"),
        ("wool", "tweed", "polyester", "down"),
        (55.0, 210.0),
        ("Women", "Men"),
        ("Button front", "Notched lapel", "Fully lined"),
    ),
    Garment(
        "sandal",
        "sandal",
        "sandals",
        5,
        "shoes",
        ("Clothing, Shoes & Jewelry", "Shoes", "Sandals"),
        ("leather", "faux leather", "rubber"),
        (14.0, 60.0),
        ("Women", "Men", "Unisex"),
        ("Open toe", "Adjustable ankle strap", "Cushioned footbed"),
    ),
    Garment(
        "shirt",
        "shirt",
        "shirts",
        6,
        "clothes",
        ("Clothing, Shoes & Jewelry", "Clothing", "Shirts", "Button-Down Shirts"),
        ("cotton", "linen", "oxford cotton", "silk"),
        (19.0, 70.0),
        ("Women", "Men"),
        ("Button-down collar", "Long sleeves", "Regular fit"),
    ),
    Garment(
        "sneaker",
        "sneaker",
        "sneakers",
        7,
        "shoes",
        ("Clothing, Shoes & Jewelry", "Shoes", "Fashion Sneakers"),
        ("canvas", "mesh", "leather"),
        (29.0, 125.0),
        ("Women", "Men", "Unisex"),
        ("Lace-up closure", "Rubber sole", "Padded collar"),
    ),
    Garment(
        "bag",
        "bag",
        "bags",
        8,
        "bag",
        ("Clothing, Shoes & Jewelry", "Handbags & Wallets", "Shoulder Bags"),
        ("leather", "canvas", "faux leather"),
        (19.0, 160.0),
        ("Women", "Unisex"),
        ("Zip top closure", "Inner pocket", "Top handle"),
    ),
    Garment(
        "boot",
        "ankle boot",
        "ankle boots",
        9,
        "shoes",
        ("Clothing, Shoes & Jewelry", "Shoes", "Boots", "Ankle & Bootie"),
        ("leather", "suede", "faux suede"),
        (39.0, 170.0),
        ("Women", "Men"),
        ("Side zip", "Block heel", "Rubber outsole"),
    ),
)

# name -> RGB (as shown in the picture)
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (28, 28, 32)),
    ("white", (250, 250, 248)),
    ("navy", (28, 42, 96)),
    ("blue", (45, 110, 205)),
    ("red", (200, 32, 42)),
    ("green", (40, 135, 65)),
    ("yellow", (242, 200, 40)),
    ("pink", (240, 140, 175)),
    ("grey", (128, 128, 134)),
    ("brown", (122, 78, 44)),
)
PATTERNS: tuple[str, ...] = ("plain", "striped", "polka dot")
STYLES: tuple[str, ...] = ("classic", "formal", "sporty", "boho", "streetwear")

# Product text by style, pattern, department and garment kind (see demo.text.meta_line).
STYLE_TITLE = {
    "classic": ("Classic", "Timeless"),
    "formal": ("Elegant", "Formal"),
    "sporty": ("Sporty", "Athletic"),
    "boho": ("Boho", "Bohemian"),
    "streetwear": ("Streetwear", "Urban"),
}
STYLE_OCCASION = {
    "classic": "Everyday Wear",
    "formal": "Office & Evening",
    "sporty": "Gym, Running & Weekend",
    "boho": "Festival & Beach",
    "streetwear": "City & Skate",
}
STYLE_PHRASE = {
    "classic": "a timeless, classic look that never goes out of fashion",
    "formal": "an elegant, formal finish for the office or an evening out",
    "sporty": "a sporty, athletic feel for active days",
    "boho": "a relaxed boho vibe for festivals and beach days",
    "streetwear": "an urban streetwear attitude for the city",
}
PATTERN_TITLE = {"plain": "", "striped": "Striped", "polka dot": "Polka Dot"}
PATTERN_FEATURE = {"plain": "Solid colour", "striped": "Striped", "polka dot": "Polka dot print"}
DEPT_TITLE = {"Women": "Women's", "Men": "Men's", "Unisex": "Unisex"}
CARE = {
    "clothes": ("Machine wash cold", "Hand wash only", "Dry clean recommended"),
    "shoes": ("Wipe clean with a damp cloth", "Spot clean only"),
    "bag": ("Wipe clean", "Spot clean only"),
}

STORES: tuple[str, ...] = (
    "Northwind Apparel",
    "Maple & Thread",
    "Urban Loom",
    "Coastline Co.",
    "Velvet Fox",
    "Stride Lab",
    "Bluebell Studio",
    "Ironpine Outfitters",
    "Lumen Wear",
    "Odd Sock Supply",
    "Harbor & Hem",
    "Kestrel Goods",
)

# Review wording by rating (1..5); a review is an opener, one or two comments and a closer.
REVIEW_TITLES = {
    5: (
        "Love it!",
        "Absolutely perfect",
        "Five stars",
        "Great {noun}",
        "Beautiful {colour} {noun}",
        "Exactly what I wanted",
        "Perfect {noun}",
    ),
    4: (
        "Really nice",
        "Very pretty",
        "Good quality",
        "Nice {noun}",
        "Happy with it",
        "Good buy",
        "Pretty {colour} {noun}",
    ),
    3: ("It's okay", "Decent but not perfect", "Mixed feelings", "Average {noun}", "So-so", "Just okay"),
    2: ("Disappointed", "Not what I expected", "Meh {noun}", "Not impressed", "Would not buy again"),
    1: ("Terrible", "Waste of money", "Very disappointed", "Returned it", "Awful {noun}", "Do not buy"),
}
OPENERS = {
    5: (
        "Absolutely love this {noun}!",
        "This {noun} is perfect.",
        "Best purchase I have made in a while.",
        "I am so happy with this {noun}.",
    ),
    4: (
        "Really nice {noun}.",
        "I like this {noun} a lot.",
        "Good {noun} for the price.",
        "Pretty happy with this one.",
    ),
    3: (
        "This {noun} is okay.",
        "It's an average {noun}.",
        "Not bad, but nothing special.",
        "Mixed feelings about this {noun}.",
    ),
    2: (
        "Disappointed with this {noun}.",
        "Not what I expected.",
        "I wanted to like this {noun} but it fell short.",
    ),
    1: (
        "Terrible {noun}, do not buy.",
        "Very disappointed.",
        "Complete waste of money.",
        "Worst {noun} I have ordered.",
    ),
}
CLOSERS = {
    5: ("Highly recommend!", "Would buy again in every colour.", "Love love love.", ""),
    4: ("Would recommend.", "Good value.", "Happy overall.", ""),
    3: ("It will do.", "Might return it.", "It's fine for the price.", ""),
    2: ("Probably returning it.", "Would not buy again.", ""),
    1: ("Returned it immediately.", "Avoid.", "Save your money.", ""),
}
# attribute -> (positive comments, negative comments)
COMMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "colour": (
        (
            "I love the {colour} colour.",
            "The {colour} is gorgeous, exactly like the picture.",
            "The shade of {colour} is beautiful.",
        ),
        (
            "The {colour} looks dull and washed out in person.",
            "I really don't like this shade of {colour}.",
            "The {colour} colour is unflattering.",
        ),
    ),
    "pattern:plain": (
        ("Love the clean, solid look.", "Simple solid colour that goes with everything."),
        ("Too plain and boring.", "The solid colour looks boring and cheap."),
    ),
    "pattern:striped": (
        ("The stripes look sharp.", "Love the stripes!"),
        ("The stripes look cheap.", "The stripes are crooked and look cheap."),
    ),
    "pattern:polka dot": (
        ("The polka dots are so cute.", "Love the polka dot print."),
        ("The polka dots look tacky.", "The dot print looks cheap up close."),
    ),
    "style": (
        ("Perfect for a {style} look.", "It has exactly the {style} vibe I wanted."),
        ("Not as {style} as the pictures suggest.", "Too {style} for my taste."),
    ),
    "category:clothes": (
        (
            "Fits true to size and the cut is great.",
            "I wear {plural} like this all the time and this one is a favourite.",
        ),
        ("Runs small and the cut is unflattering.", "Not really my kind of {noun}, the fit is off."),
    ),
    "category:shoes": (
        ("Very comfortable and true to size.", "Comfortable right out of the box."),
        ("Uncomfortable, they hurt my feet.", "Runs small and gave me blisters."),
    ),
    "category:bag": (
        ("Roomy with plenty of pockets.", "Holds everything I need and looks great."),
        ("Too small to fit anything.", "The strap is flimsy."),
    ),
    "quality": (
        ("Well made with sturdy stitching.", "The {material} feels soft and high quality."),
        ("Poor stitching, it came apart quickly.", "The {material} feels thin and cheap."),
    ),
}
