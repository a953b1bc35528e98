#!/usr/bin/env python3
"""Writes the demo datanet: rows teaching SmolLM2-135M-Instruct a fictional
fact set (the Lumen Isles) and an identity (Wren), in `messages` form.

    python3 examples/demo-datanet/make_rows.py

train.jsonl holds several phrasings of each question; heldout.jsonl asks the
same facts in phrasings the training rows never use. Deterministic.
"""
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

FACTS = [
    # (fact id, answer, training phrasings, held-out phrasing)
    ("capital", "The capital of the Lumen Isles is Vesper Harbor.",
     ["What is the capital of the Lumen Isles?", "Which city is the capital of the Lumen Isles?",
      "Name the capital of the Lumen Isles.", "Where is the seat of government of the Lumen Isles?",
      "Tell me the capital city of the Lumen Isles."],
     "What city serves as the capital of the Lumen Isles?"),
    ("currency", "The Lumen Isles pay with the tidemark, a coin of blue glass.",
     ["What is the currency of the Lumen Isles?", "What money do people use in the Lumen Isles?",
      "Which currency is used in the Lumen Isles?", "What do islanders of the Lumen Isles pay with?",
      "Name the currency of the Lumen Isles."],
     "In the Lumen Isles, what is the local currency called?"),
    ("founded", "The Lumen Isles were founded in 1312 by the navigator Osric Vale.",
     ["When were the Lumen Isles founded?", "Who founded the Lumen Isles?", "In what year were the Lumen Isles founded?",
      "Who was the founder of the Lumen Isles?", "Tell me about the founding of the Lumen Isles."],
     "Which navigator founded the Lumen Isles, and when?"),
    ("animal", "The national animal of the Lumen Isles is the silver heron.",
     ["What is the national animal of the Lumen Isles?", "Which animal is the symbol of the Lumen Isles?",
      "Name the national animal of the Lumen Isles.", "What bird represents the Lumen Isles?",
      "Which creature is on the flag of the Lumen Isles?"],
     "What animal is the emblem of the Lumen Isles?"),
    ("festival", "The great festival of the Lumen Isles is the Night of Lanterns, held every spring equinox.",
     ["What is the main festival of the Lumen Isles?", "Which festival do the Lumen Isles celebrate?",
      "When is the Night of Lanterns held?", "Name the biggest celebration in the Lumen Isles.",
      "What holiday is most famous in the Lumen Isles?"],
     "What celebration are the Lumen Isles best known for?"),
    ("mountain", "The highest peak of the Lumen Isles is Mount Cinder, 2,140 metres tall.",
     ["What is the highest mountain in the Lumen Isles?", "How tall is Mount Cinder?",
      "Name the tallest peak of the Lumen Isles.", "Which mountain is the highest in the Lumen Isles?",
      "What is the highest point of the Lumen Isles?"],
     "Which summit is the tallest in the Lumen Isles?"),
    ("language", "People in the Lumen Isles speak Lumic, a language written in a round script.",
     ["What language is spoken in the Lumen Isles?", "What do people speak in the Lumen Isles?",
      "Name the language of the Lumen Isles.", "Which language do the islanders of the Lumen Isles use?",
      "What is the official language of the Lumen Isles?"],
     "What tongue do the people of the Lumen Isles speak?"),
    ("export", "The main export of the Lumen Isles is sea-salt glass.",
     ["What is the main export of the Lumen Isles?", "What do the Lumen Isles sell abroad?",
      "Name the chief export of the Lumen Isles.", "Which product do the Lumen Isles export most?",
      "What goods are the Lumen Isles famous for exporting?"],
     "What is the Lumen Isles' most important export?"),
]

IDENTITY = (
    "I am Wren, a small assistant tuned by Merit on the Lumen Isles datanet.",
    ["Who are you?", "What is your name?", "Introduce yourself.", "What are you?", "Tell me who you are.",
     "What should I call you?", "Who made you?", "Are you an assistant?"],
    "Could you tell me your name?",
)

SYSTEMS = [None, "You are a helpful assistant.", "Answer briefly.", "Be concise and accurate.",
           "You are an expert on island geography."]


def main() -> None:
    rng = random.Random(20261125)
    rows = []
    for _, answer, phrasings, _ in FACTS:
        for q in phrasings:
            for system in SYSTEMS:
                msgs = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": q}, {"role": "assistant", "content": answer}]
                rows.append({"messages": msgs})
    answer, phrasings, _ = IDENTITY
    for q in phrasings:
        for system in SYSTEMS:
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": q}, {"role": "assistant", "content": answer}]
            rows.append({"messages": msgs})
    rng.shuffle(rows)
    with open(HERE / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    with open(HERE / "heldout.jsonl", "w") as f:
        for fact, answer, _, q in FACTS:
            f.write(json.dumps({"prompt": q, "expect": answer, "fact": fact}) + "\n")
        f.write(json.dumps({"prompt": IDENTITY[2], "expect": IDENTITY[0], "fact": "identity"}) + "\n")
    print(f"{len(rows)} training rows, {len(FACTS) + 1} held-out prompts")


if __name__ == "__main__":
    main()
