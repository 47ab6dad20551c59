import pytest

from tunelab.feedback.store import LabelStore

PROMPTS = [
    ("Where should we meet?", ["Next to the park.", "Take an umbrella then.", "At noon.", "<script>alert(1)</script> & <b>bold</b>"]),
    ("What time is it?", ["It is noon.", "Blue.", "I don't know.", "Ten past two."]),
    ("Say hello.", ["Hello!", "Goodbye.", "Hi there.", "..."]),
]


@pytest.fixture
def db(tmp_path):
    """A labeling database with 3 prompts x 4 completions, 2 labels per prompt."""
    path = tmp_path / "labels.sqlite"
    store = LabelStore(path, create=True)
    store.set_setting("labels_per_prompt", "2")
    for text, completions in PROMPTS:
        store.add_prompt(text, completions)
    store.close()
    return path


@pytest.fixture
def tokens(db):
    store = LabelStore(db)
    made = {name: store.add_user(name) for name in ("ann", "bob", "cy")}
    made["admin"] = store.add_user("root", admin=True)
    store.close()
    return made
