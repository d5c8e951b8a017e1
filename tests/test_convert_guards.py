"""Every published Libra-Guard has a known name, a repo id, and an architecture the converter handles."""

from __future__ import annotations

from libra_edge.convert.architectures import registered
from libra_edge.models import hub, registry

EXPECTED = {
    "libra-guard-0.5b": "caskcsg/Libra-Guard-Qwen2.5-0.5B-Instruct",
    "libra-guard-1.5b": "caskcsg/Libra-Guard-Qwen2.5-1.5B-Instruct",
    "libra-guard-3b": "caskcsg/Libra-Guard-Qwen2.5-3B-Instruct",
    "libra-guard-7b": "caskcsg/Libra-Guard-Qwen2.5-7B-Instruct",
    "libra-guard-14b": "caskcsg/Libra-Guard-Qwen2.5-14B-Instruct",
    "libra-guard-yi-9b": "caskcsg/Libra-Guard-Yi-1.5-9B-Chat",
    "libra-guard-qwen-14b": "caskcsg/Libra-Guard-Qwen-14B-Chat",
}


def test_all_seven_published_guards_have_known_names() -> None:
    assert registry.KNOWN_MODELS == EXPECTED


def test_models_pull_resolves_each_known_name() -> None:
    for name, repo in EXPECTED.items():
        assert hub.resolve_repo(name) == (repo, name)
        assert hub.resolve_repo(name.upper()) == (repo, name)


def test_each_guard_architecture_is_registered_in_the_converter() -> None:
    assert {g.architecture for g in registry.PUBLISHED_GUARDS} <= set(registered())


def test_pull_downloads_every_vocabulary_file_the_converter_reads() -> None:
    for needed in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "qwen.tiktoken"):
        assert needed in hub.CONVERSION_FILES
    assert not [p for p in hub.CONVERSION_FILES if p.endswith((".py", ".bin", ".pt"))]  # never code or pickles
