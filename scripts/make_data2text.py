"""Writes cuetune's demo data-to-text set (facts -> one sentence), composed for this project."""
import json
import random
from pathlib import Path

rng = random.Random(2026)
names = ["The Copper Pot", "Blue Lantern", "Green Fig", "The Old Mill", "Saffron House", "Harbour Light",
         "The Red Door", "Olive Tree", "Golden Wok", "The Quiet Fox", "Maple Corner", "Silver Spoon",
         "Little Napoli", "The Tea Room", "North Star Diner", "Cedar Grill", "The Lemon Bowl", "Sunrise Cafe",
         "Bamboo Garden", "The Brass Kettle"]
foods = ["Italian", "Chinese", "Indian", "French", "Japanese", "Mexican", "Greek", "Thai"]
areas = ["city centre", "riverside", "old town", "harbour"]
prices = ["cheap", "moderately priced", "expensive"]
def sentences(n, f, a, p):
    art = "an" if p[0] in "aeiou" else "a"
    return [f"{n} is {art} {p} {f} restaurant in the {a}.",
            f"In the {a}, {n} serves {p} {f} food.",
            f"{n} offers {f} food in the {a} and it is {p}."]
combos = [(n, f, a, p) for n in names for f in foods for a in areas for p in prices]
rng.shuffle(combos)
def rows(cs, every):
    out = []
    for i, (n, f, a, p) in enumerate(cs):
        mr = f"name[{n}], food[{f}], area[{a}], price[{p}]"
        s = sentences(n, f, a, p)
        out.append({"text": mr, "target": s if every else s[i % 3]})
    return out
root = Path("src/cuetune/resources/data2text")
splits = (("train", combos[:60], False), ("dev", combos[60:75], False), ("test", combos[75:95], True))
for name, cs, every in splits:
    (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(cs, every)))
