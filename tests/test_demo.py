"""The bundled demo dataset: shipped inside the package, 8 balanced intents, a fixed disjoint split."""

from collections import Counter

from slmkit.data import DEMO_TEST, DEMO_TRAIN, read_examples


def normalized(text: str) -> str:
    return " ".join(text.lower().split())


def test_demo_split_is_balanced_and_disjoint():
    train, test = read_examples(DEMO_TRAIN), read_examples(DEMO_TEST)
    assert Counter(e.label for e in train) == Counter({label: 104 for label in Counter(e.label for e in train)})
    assert len(Counter(e.label for e in train)) == 8
    assert Counter(e.label for e in test) == Counter({label: 26 for label in Counter(e.label for e in train)})
    train_texts = {normalized(e.text) for e in train}
    assert len(train_texts) == len(train)
    assert not train_texts & {normalized(e.text) for e in test}
