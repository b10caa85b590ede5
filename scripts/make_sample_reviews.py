"""Regenerate kt_pipeline/data/sample_reviews.csv, the bundled demo data.

Short English movie and game reviews written for this project from hand-made
phrase lists (no external text). Deterministic: `python scripts/make_sample_reviews.py`.
"""

import csv
import random

SUBJECTS = {
    "movie": ["the film", "this movie", "the plot", "the acting", "the soundtrack",
              "the ending", "the cast", "the director's work", "the script", "the cinematography"],
    "game": ["the game", "the controls", "the level design", "the story mode", "the graphics",
             "the boss fights", "the multiplayer", "the puzzles", "the soundtrack", "the campaign"],
}
POS = ["was wonderful", "is a joy from start to finish", "felt fresh and clever",
       "left me smiling", "is beautifully done", "kept me hooked", "is brilliant",
       "exceeded every expectation", "is genuinely moving", "was great fun",
       "deserves every award", "is a delight", "works perfectly", "is charming and warm"]
NEG = ["was a mess", "is painfully boring", "felt lazy and cheap", "left me cold",
       "is badly done", "dragged on forever", "is awful", "disappointed me completely",
       "is a waste of time", "was frustrating", "made no sense at all", "is dull",
       "falls apart quickly", "is clumsy and tiresome"]
POS_TAIL = ["Highly recommended.", "I would watch it again.", "Ten out of ten.",
            "Loved it.", "A must see.", "Worth every minute.", ""]
NEG_TAIL = ["Avoid it.", "I want my money back.", "Two out of ten.",
            "Hated it.", "Skip this one.", "Not worth the time.", ""]
OPENERS = ["Honestly,", "Overall,", "Frankly,", "To be fair,", "In short,", ""]
# Harder rows: the first clause points the other way, the second decides.
POS_TURN = ["I expected to hate it, but", "Despite the slow start,", "The trailer looked awful, yet",
            "I almost gave up, but then"]
NEG_TURN = ["It started well, but", "Despite the big budget,", "The trailer looked great, yet",
            "I wanted to love it, but"]


def make(n=400, seed=7):
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        kind = rng.choice(sorted(SUBJECTS))
        positive = rng.random() < 0.5
        subj = rng.choice(SUBJECTS[kind])
        verb = rng.choice(POS if positive else NEG)
        tail = rng.choice(POS_TAIL if positive else NEG_TAIL) if rng.random() < 0.5 else ""
        if rng.random() < 0.3:
            opener = rng.choice(POS_TURN if positive else NEG_TURN)
        else:
            opener = rng.choice(OPENERS)
        text = " ".join(x for x in [opener, subj, verb + ".", tail] if x)
        text = text[0].upper() + text[1:]
        if text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": "positive" if positive else "negative",
                     "source": kind})
    return rows


if __name__ == "__main__":
    rows = make()
    with open("kt_pipeline/data/sample_reviews.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["text", "label", "source"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} rows")
