"""The realistic profile's lexicon: every word the wording model (twins) and the query phrasing use, split by
role so that train, val and test draw from partly disjoint vocabularies.

Each entry is a :class:`Words`: words every role may use (``shared``) plus words only one role uses
(``train``, ``val``, ``test``). ``words(entry, role)`` is what a role draws from. The seen-phrasing test
split (``test_seen``) uses the train role. Nothing here is read by prompt code: the twin's text is
whatever the wording model writes with these words, as a VLM would.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("train", "val", "test")


@dataclass(frozen=True)
class Words:
    """Words of one slot: ``shared`` by every role, the others only by their role."""

    shared: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    test: tuple[str, ...] = ()

    def of(self, role: str) -> tuple[str, ...]:
        """The words ``role`` draws from (shared first); the shared words alone for an unknown role."""
        own = getattr(self, role, ()) if role in ROLES else ()
        return tuple(self.shared) + tuple(own) or tuple(self.train)


def W(shared: str = "", train: str = "", val: str = "", test: str = "") -> Words:  # noqa: N802 - a table row
    """A Words row from ``|``-separated strings (compact tables below)."""
    def split(s: str) -> tuple[str, ...]:
        return tuple(w.strip() for w in s.split("|") if w.strip())
    return Words(split(shared), split(train), split(val), split(test))


# --- nouns of categories (twins and queries) ---------------------------------------------------------------
NOUNS: dict[str, Words] = {
    # background regions
    "wall": W("wall", "wall surface", "interior wall", "back wall"),
    "floor": W("floor", "floorboards", "flooring", "floor surface"),
    "sky": W("sky", "open sky", "daytime sky", "skyline"),
    "grass": W("grass", "lawn", "turf", "meadow"),
    "road": W("road", "street", "roadway", "asphalt"),
    "tabletop": W("table top", "table surface", "wooden surface", "tabletop"),
    # furniture and appliances
    "table": W("table", "dining table", "coffee table", "side table"),
    "chair": W("chair", "desk chair", "dining chair", "kitchen chair"),
    "sofa": W("sofa", "couch", "settee", "loveseat"),
    "lamp": W("lamp", "floor lamp", "standing lamp", "reading light"),
    "plant": W("plant", "houseplant", "potted plant", "fern"),
    "tv": W("television", "tv", "monitor", "flat screen"),
    "window": W("window", "sash window", "glazed window", "casement"),
    "painting": W("painting", "picture", "artwork", "framed print"),
    "door": W("door", "wooden door", "entrance door", "doorway"),
    "rug": W("rug", "carpet", "mat", "runner"),
    "fridge": W("fridge", "refrigerator", "freezer", "icebox"),
    "counter": W("counter", "countertop", "worktop", "kitchen counter"),
    # small things
    "mug": W("mug", "cup", "coffee cup", "teacup"),
    "bottle": W("bottle", "water bottle", "flask", "carafe"),
    "book": W("book", "notebook", "novel", "paperback"),
    "laptop": W("laptop", "computer", "laptop computer", "notebook pc"),
    "vase": W("vase", "flower vase", "urn", "amphora"),
    "bowl": W("bowl", "mixing bowl", "basin", "serving bowl"),
    "apple": W("apple", "", "", "pome"),
    "banana": W("banana", "", "plantain", ""),
    "plate": W("plate", "dinner plate", "saucer", "platter"),
    "kettle": W("kettle", "electric kettle", "teakettle", "tea kettle"),
    # animals and people
    "cat": W("cat", "kitten", "kitty", "tabby"),
    "dog": W("dog", "puppy", "pup", "hound"),
    "person": W("person", "man | woman", "pedestrian", "individual"),
    # outdoors
    "tree": W("tree", "oak", "maple", "elm"),
    "house": W("house", "home", "cottage", "building"),
    "car": W("car", "automobile", "sedan", "vehicle"),
    "bicycle": W("bicycle", "bike", "cycle", "pushbike"),
    "sun": W("sun", "", "", ""),
    "cloud": W("cloud", "", "", ""),
    "bench": W("bench", "park bench", "garden bench", "wooden bench"),
    "streetlight": W("street lamp", "lamppost", "light pole", "street light"),
}

PART_NOUNS: dict[str, Words] = {
    "handle": W("handle", "grip", "", "knob"),
    "body": W("body", "", "main body", ""),
    "back": W("back", "backrest", "", "back support"),
    "seat": W("seat", "", "seat cushion", "sitting surface"),
    "leg": W("leg", "", "", "support"),
    "top": W("top", "tabletop", "surface", "top surface"),
    "arm": W("arm", "armrest", "", "side arm"),
    "shade": W("shade", "lampshade", "", "lamp cover"),
    "pole": W("pole", "stand", "post", "stem"),
    "base": W("base", "", "foot", "bottom"),
    "pot": W("pot", "planter", "", "flowerpot"),
    "leaves": W("leaves", "foliage", "", "greenery"),
    "screen": W("screen", "display", "", "panel"),
    "stand": W("stand", "", "pedestal", "mount"),
    "cap": W("cap", "lid", "", "stopper"),
    "keyboard": W("keyboard", "", "keys", "key deck"),
    "head": W("head", "", "", ""),
    "tail": W("tail", "", "", ""),
    "frame": W("frame", "", "border", "surround"),
    "pane": W("pane", "glass", "", "glass panel"),
    "canvas": W("canvas", "painted area", "", "print"),
    "door": W("door", "", "", "hatch"),
    "spout": W("spout", "", "nozzle", "pouring spout"),
    "roof": W("roof", "", "rooftop", "roofing"),
    "walls": W("walls", "facade", "", "outer wall"),
    "wheel": W("wheel", "tire", "", "tyre"),
    "window": W("window", "windowpane", "", "glazing"),
    "trunk": W("trunk", "", "stem", "bark"),
    "crown": W("crown", "treetop", "canopy", "leafy top"),
    "torso": W("torso", "upper body", "", "chest"),
    "legs": W("legs", "", "", "lower body"),
    "cabinet": W("cabinet", "cupboard", "", "cupboard door"),
}

COLOURS: dict[str, Words] = {
    "red": W("red", "crimson", "cherry", "scarlet"),
    "orange": W("orange", "tangerine", "amber", "apricot"),
    "yellow": W("yellow", "lemon", "golden", "mustard"),
    "green": W("green", "emerald", "olive", "lime green"),
    "blue": W("blue", "navy", "cobalt", "azure"),
    "purple": W("purple", "violet", "lilac", "plum"),
    "pink": W("pink", "rose", "salmon", "fuchsia"),
    "brown": W("brown", "chocolate", "chestnut", "tan"),
    "black": W("black", "jet black", "ebony", "charcoal"),
    "white": W("white", "ivory", "snow white", "cream"),
    "gray": W("gray", "grey", "slate", "silver"),
}

SIZES: dict[str, Words] = {
    "small": W("small", "little", "tiny", "petite"),
    "medium": W("medium-sized", "mid-sized", "average-sized", "moderate"),
    "large": W("large", "big", "huge", "sizeable"),
}

MATERIALS: dict[str, Words] = {
    "wood": W("wooden", "timber", "oak-wood", "wood"),
    "metal": W("metal", "steel", "metallic", "iron"),
    "plastic": W("plastic", "", "vinyl", "synthetic"),
    "ceramic": W("ceramic", "porcelain", "stoneware", "clay"),
    "glass": W("glass", "", "glassy", "crystal"),
    "fabric": W("fabric", "cloth", "upholstered", "woven"),
    "leather": W("leather", "", "", "hide"),
    "striped": W("striped", "stripy", "banded", "pinstriped"),
    "dotted": W("dotted", "spotted", "polka-dot", "speckled"),
}

STATES: dict[str, Words] = {
    "sleeping": W("sleeping", "asleep", "napping", "dozing"),
    "sitting": W("sitting", "", "seated", "perched"),
    "standing": W("standing", "", "upright", "waiting"),
    "walking": W("walking", "strolling", "", "stepping"),
    "lying": W("lying", "resting", "lying down", "curled up"),
}

# where the wording model says a thing is, relative to its nearest neighbour ("a lamp next to the sofa")
CONTEXT = W("near", "next to", "by", "beside")

# --- query words ----------------------------------------------------------------------------------------
RELATIONS: dict[str, Words] = {
    "left of": W("left of", "to the left of", "on the left of", "on the left side of | west of"),
    "right of": W("right of", "to the right of", "on the right of", "on the right-hand side of | east of"),
    "above": W("above", "over | higher than", "higher up than", "further up than | up above"),
    "below": W("below", "under | lower than", "lower down than", "beneath | underneath"),
}
NEAREST = W("nearest to", "closest to", "nearest", "beside | in closest proximity to")
EXTREMES: dict[str, Words] = {
    "largest": W("largest", "biggest", "largest-looking", "bulkiest | most massive"),
    "smallest": W("smallest", "tiniest", "littlest", "most diminutive | least bulky"),
    "leftmost": W("leftmost", "furthest left", "far-left", "left-most | westernmost"),
    "rightmost": W("rightmost", "furthest right", "far-right", "right-most | easternmost"),
    "topmost": W("topmost", "highest", "uppermost", "top-most | highest-up"),
    "bottommost": W("bottommost", "lowest", "lowermost", "bottom-most | lowest-down"),
}
# "the one ... than the other <plural>": a comparative shape of each extreme (test and val families)
COMPARATIVES: dict[str, Words] = {
    "largest": W("bigger", "larger", "larger", "bigger"),
    "smallest": W("smaller", "tinier", "smaller", "smaller"),
    "leftmost": W("further left", "", "more to the left", "further to the left"),
    "rightmost": W("further right", "", "more to the right", "further to the right"),
    "topmost": W("higher", "", "higher up", "higher up"),
    "bottommost": W("lower", "", "lower down", "lower down"),
}
NUMBERS = {2: W("two", "2", "", "a pair of"), 3: W("three", "3", "", "a trio of"), 4: W("four", "4", "", "")}

# Functions: what a category is for, as noun phrases ("something to ..."), several per role.
FUNCTIONS: dict[str, Words] = {
    "mug": W("", "something to drink coffee from | a thing for hot drinks | what you sip tea out of",
             "something I could pour hot chocolate into", "a container for my morning coffee | "
             "something to hold a hot latte"),
    "bottle": W("", "something that holds water | a container for carrying liquids | what you refill with juice",
                "something to keep lemonade in", "what keeps my drink sealed on a hike | a thing to pour wine from"),
    "book": W("", "something to read | a thing with pages | what you open to read a story",
              "something full of chapters", "something to study from | a thing with a story printed inside"),
    "laptop": W("", "something to type emails on | a machine for office work | what you browse the web on",
                "a device for writing code", "what I would join a video call from | a portable thing to work on"),
    "vase": W("", "something to put flowers in | a holder for fresh flowers | where tulips go",
              "something to arrange roses in", "a vessel for a bouquet | what displays cut daisies"),
    "bowl": W("", "something to eat soup from | a thing to serve cereal in | what you mix a salad in",
              "something to pour porridge into", "a vessel for noodles | something to whisk eggs in"),
    "plate": W("", "something to put food on | what dinner is served on | a dish for a slice of cake",
               "something to set a sandwich on", "a flat thing to serve a steak on | what I eat a meal off"),
    "kettle": W("", "something to boil water in | a thing for making tea water | what heats water on the stove",
                "something that whistles when the water boils", "an appliance I fill to boil water | "
                "what I would use to heat water for instant noodles"),
    "apple": W("", "a fruit to eat | a healthy snack | something crunchy to bite into",
               "something sweet from an orchard", "a fruit that keeps the doctor away | a round snack with a core"),
    "banana": W("", "a fruit to peel | a yellow snack | what a monkey would eat",
                "something with a peel to snack on", "a fruit rich in potassium | a curved snack"),
    "chair": W("", "something to sit on | a place to sit down | what you pull up to a table",
               "something to rest on while eating", "a place to take a seat | somewhere to sit at dinner"),
    "sofa": W("", "something to lie down on | a place to relax | where you nap in the afternoon",
              "a comfy spot for the whole family", "somewhere to watch a movie from | where guests could lounge"),
    "lamp": W("", "something that gives light | what lights the room | what you switch on at night",
              "a source of light for reading", "what helps me read in the dark | something that glows at night"),
    "plant": W("", "something that needs watering | a living thing in a pot | what grows leaves indoors",
               "something green that grows", "what would wilt without water | something that brings nature indoors"),
    "tv": W("", "something to watch shows on | what plays the news | where you watch a match",
            "a device for streaming films", "a screen for binge-watching series | what shows the evening news"),
    "window": W("", "what lets light in | something to look outside through | what you open for fresh air",
                "where daylight enters the room", "a way to see the garden from inside | a pane to let the sun in"),
    "painting": W("", "something to look at on the wall | art on the wall | what decorates the wall",
                  "a piece of art hung up", "something an artist painted | a picture that hangs as decoration"),
    "door": W("", "what you walk through to leave | a way out of the room | how you enter the next room",
              "something to lock at night", "the way in and out | what I would knock on"),
    "rug": W("", "something soft to stand on | what covers the floor | what keeps your feet warm",
             "a soft covering underfoot", "something to vacuum | a woven thing on the floor"),
    "fridge": W("", "something that keeps food cold | where milk is stored | where you chill drinks",
                "an appliance that keeps groceries fresh", "where leftovers go overnight | something to keep butter cool"),
    "table": W("", "something to eat at | a place to put things on | where you set down a plate",
               "a surface for a board game", "what I would work at | where the family has dinner"),
    "cat": W("", "a pet that purrs | an animal that catches mice | a pet that chases a laser",
             "a furry animal that meows", "a pet that likes to nap in the sun | an animal with whiskers"),
    "dog": W("", "a pet that barks | an animal to take for a walk | a pet that fetches a ball",
             "a loyal animal that wags its tail", "a pet that guards the house | an animal that loves bones"),
    "person": W("", "someone who could help me | a human | somebody to ask for directions",
                "somebody walking around", "someone I could talk to | a human being standing here"),
    "tree": W("", "something that gives shade | a plant with a trunk | where a bird builds a nest",
              "something I could climb", "something that grows acorns | a tall plant with branches"),
    "house": W("", "a place where people live | somewhere to live | where a family sleeps at night",
               "a home for a family", "somewhere to shelter from a storm | a building people live in"),
    "car": W("", "something to drive | a way to get to work | what you drive to the beach",
             "a vehicle that needs fuel", "something that could take me across town | a thing with a steering wheel"),
    "bicycle": W("", "something to ride | a thing with pedals | what you pedal to school",
                 "a two-wheeled ride", "something to cycle to the park on | a ride powered by my legs"),
    "sun": W("", "what gives light and warmth | the source of daylight | what makes the day bright",
             "something that could give me a sunburn", "the star that warms the earth | what rises in the morning"),
    "cloud": W("", "what could bring rain | something white in the sky | what floats in the sky",
               "something that might block the sunshine", "where rain comes from | a fluffy thing up high"),
    "bench": W("", "something to sit on outside | a place to rest in the park | where you rest your legs outdoors",
               "a seat in the park", "somewhere two people could sit outside | a spot to feed the pigeons from"),
    "streetlight": W("", "what lights the street at night | a light by the road | what shines on the pavement",
                     "something that turns on at dusk", "a lamp for the sidewalk | what lights the way home after dark"),
}
PART_FUNCTIONS: dict[str, Words] = {
    "handle": W("", "the part you hold | what you grab it by", "the bit to grip", "where your fingers go to lift it"),
    "back": W("", "the part you lean against", "what supports your back", "where your spine rests"),
    "seat": W("", "the part you sit on", "where you put your bottom", "the sitting part"),
    "leg": W("", "what it stands on", "the supports underneath", "what holds it up from the floor"),
    "top": W("", "the flat part on top", "where things are put", "the upper surface"),
    "shade": W("", "the part that softens the light", "the cover around the bulb", "what diffuses the glow"),
    "screen": W("", "the part that shows the picture", "where images appear", "the part you look at"),
    "cap": W("", "the part that seals it", "what closes it", "what you twist off to open it"),
    "roof": W("", "the part that keeps the rain out", "what covers the top", "what shelters it from above"),
    "door": W("", "the part you walk in through", "the way inside", "what opens to let you in"),
    "wheel": W("", "what it rolls on", "the round parts", "what touches the road"),
    "trunk": W("", "the wooden stem", "what holds up the leaves", "the woody column"),
    "crown": W("", "the leafy top", "where the leaves are", "the green top part"),
    "head": W("", "the part with the face", "where the eyes are", "the part with ears"),
    "tail": W("", "the part at the back end", "what wags or swishes", "the rear appendage"),
    "spout": W("", "where the water pours out", "the part it pours from", "the pouring end"),
    "pot": W("", "what holds the soil", "the container at the bottom", "where the roots are"),
    "leaves": W("", "the green part", "the leafy part", "what photosynthesises"),
    "keyboard": W("", "where you type", "the part with keys", "what you press to write"),
    "pane": W("", "the part you see through", "the clear part", "the transparent part"),
}
