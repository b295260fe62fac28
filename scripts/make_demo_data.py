"""Write the offline demo dataset: data/demo/{train,validation,test}.jsonl.

Short templated news items whose one-sentence summary can be derived from the document (the facts
it needs are in the text, among distractor sentences), so a tiny model learns it in minutes on a CPU.
Deterministic: the same seed writes the same bytes (a test checks the committed files).

    python scripts/make_demo_data.py                # writes data/demo/
    python scripts/make_demo_data.py --out /tmp/demo --train 2000
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

COMPANIES = [
    "Arlo Systems",
    "Bexley Foods",
    "Corvid Motors",
    "Dunmore Energy",
    "Elston Bank",
    "Fenwick Labs",
    "Garrick Steel",
    "Halden Air",
    "Ivory Mobile",
    "Jasper Retail",
    "Kestrel Media",
    "Lumen Pharma",
    "Marlow Shipping",
    "Norland Telecom",
    "Orrin Textiles",
    "Pellham Insurance",
    "Quarry Mining",
    "Redfern Games",
    "Solway Water",
    "Tamsin Robotics",
]
CITIES = [
    "Oslo",
    "Lyon",
    "Austin",
    "Perth",
    "Osaka",
    "Lima",
    "Dublin",
    "Porto",
    "Denver",
    "Seoul",
    "Nairobi",
    "Quebec",
    "Krakow",
    "Tunis",
    "Leeds",
    "Hanoi",
]
PEOPLE = [
    "Maria Olsen",
    "James Otieno",
    "Chen Wei",
    "Laura Pinto",
    "Omar Haddad",
    "Sofia Novak",
    "Ravi Menon",
    "Ana Costa",
    "Tom Becker",
    "Yuki Sato",
    "Lena Fischer",
    "Diego Ramos",
]
SECTORS = [
    "technology",
    "food",
    "car",
    "energy",
    "banking",
    "chemicals",
    "steel",
    "airline",
    "phone",
    "retail",
    "media",
    "drug",
    "shipping",
    "telecoms",
    "clothing",
    "insurance",
    "mining",
    "games",
    "water",
    "robotics",
]
DRIVERS = [
    "strong demand in Asia",
    "lower fuel costs",
    "a new product line",
    "higher prices",
    "cost cutting",
    "online sales",
    "a weak currency",
    "new contracts",
    "falling demand",
    "a strike",
]
TEAMS = ["Rovers", "United", "Athletic", "Wanderers", "City", "Rangers", "Albion", "Harriers", "Olympic", "Town"]
PRODUCTS = ["phone", "laptop", "electric bike", "smart watch", "tablet", "camera", "speaker", "drone"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
WEATHER = ["heavy rain", "strong winds", "snow", "a heat wave", "thick fog", "hail"]
FILLERS = [
    "The announcement came after markets closed.",
    "Officials declined to comment further.",
    "Local newspapers covered the story on their front pages.",
    "The news was widely discussed online.",
    "Observers said more details would follow next week.",
    "A spokesperson said the company would publish a full report later.",
    "Traffic in the city centre was busy all day.",
    "Similar events were reported last year.",
]


def earnings(r: random.Random) -> tuple[str, str]:
    i = r.randrange(len(COMPANIES))
    co, sector, city, ceo = COMPANIES[i], SECTORS[i], r.choice(CITIES), r.choice(PEOPLE)
    up = r.random() < 0.5
    pct, amount, driver = r.randint(2, 40), r.randint(10, 990), r.choice(DRIVERS)
    verb = "rose" if up else "fell"
    facts = [
        f"{co}, a {sector} company based in {city}, said on {r.choice(WEEKDAYS)} that its quarterly revenue "
        f"{verb} {pct} percent to {amount} million dollars.",
        f"Chief executive {ceo} said the result was mainly due to {driver}.",
    ]
    noise = [
        f"Analysts had expected a change of about {r.randint(1, 30)} percent.",
        f"Shares in {co} {'gained' if r.random() < 0.5 else 'lost'} {r.randint(1, 9)} percent in early trading.",
    ]
    summary = f"{co} revenue {verb} {pct} percent to {amount} million dollars due to {driver}."
    return _compose(r, facts, noise), summary


def match(r: random.Random) -> tuple[str, str]:
    city_a, city_b = r.sample(CITIES, 2)
    team_a, team_b = f"{city_a} {r.choice(TEAMS)}", f"{city_b} {r.choice(TEAMS)}"
    goals_a, goals_b = r.randint(1, 5), r.randint(0, 4)
    if goals_b >= goals_a:
        goals_b = goals_a - 1
    scorer, minute = r.choice(PEOPLE), r.randint(5, 89)
    facts = [
        f"{team_a} beat {team_b} {goals_a}-{goals_b} on {r.choice(WEEKDAYS)} "
        f"in front of {r.randint(5, 60)} thousand fans.",
        f"{scorer} scored the decisive goal in the {minute}th minute.",
    ]
    noise = [
        f"The referee showed {r.randint(1, 6)} yellow cards.",
        f"{team_b} had won their previous {r.randint(2, 5)} matches.",
    ]
    summary = f"{team_a} beat {team_b} {goals_a}-{goals_b}, with {scorer} scoring in the {minute}th minute."
    return _compose(r, facts, noise), summary


def launch(r: random.Random) -> tuple[str, str]:
    i = r.randrange(len(COMPANIES))
    co, product, city = COMPANIES[i], r.choice(PRODUCTS), r.choice(CITIES)
    price, month = r.randint(99, 1999), r.choice(["March", "April", "June", "September", "November"])
    facts = [
        f"{co} presented a new {product} at an event in {city} on {r.choice(WEEKDAYS)}.",
        f"The {product} will cost {price} dollars and goes on sale in {month}.",
    ]
    noise = [
        f"About {r.randint(2, 20)} hundred guests attended the presentation.",
        f"Its previous model sold {r.randint(1, 9)} million units.",
    ]
    summary = f"{co} will sell its new {product} for {price} dollars from {month}."
    return _compose(r, facts, noise), summary


def storm(r: random.Random) -> tuple[str, str]:
    city, weather, person = r.choice(CITIES), r.choice(WEATHER), r.choice(PEOPLE)
    homes, hours = r.randint(2, 90), r.randint(3, 48)
    facts = [
        f"{weather.capitalize()} hit {city} on {r.choice(WEEKDAYS)}, leaving {homes} thousand homes without power.",
        f"Mayor {person} said power should return within {hours} hours.",
    ]
    noise = [f"Schools in {city} stayed open.", "Forecasters expect calmer weather by the weekend."]
    summary = f"{weather.capitalize()} left {homes} thousand homes in {city} without power for up to {hours} hours."
    return _compose(r, facts, noise), summary


def _compose(r: random.Random, facts: list[str], noise: list[str]) -> str:
    # Facts keep their order; distractors and fillers are placed around them.
    extra = noise + r.sample(FILLERS, r.randint(1, 3))
    r.shuffle(extra)
    cut = r.randint(0, len(extra))
    return " ".join(extra[:cut][:2] + facts + extra[cut:])


KINDS = [earnings, match, launch, storm]


def make_split(n: int, seed: int, prefix: str) -> list[dict]:
    r = random.Random(seed)
    rows = []
    for i in range(n):
        document, summary = r.choice(KINDS)(r)
        rows.append({"id": f"{prefix}-{i:05d}", "document": document, "summary": summary})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data" / "demo"))
    ap.add_argument("--train", type=int, default=1200)
    ap.add_argument("--validation", type=int, default=100)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=20261125)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate([("train", args.train), ("validation", args.validation), ("test", args.test)]):
        rows = make_split(n, args.seed + k, split)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} rows to {out / (split + '.jsonl')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
