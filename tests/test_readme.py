"""The README's configuration tables list every variable config.py owns, with its default."""

from pathlib import Path

from beyla_sidecar.config import Config, WebhookConfig, describe

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_variable_is_in_the_readme_with_its_default() -> None:
    for cls in (Config, WebhookConfig):
        for name, default, _ in describe(cls):
            row = f"| `{name}` | `{default}` |" if default else f"| `{name}` | |"
            assert row in README, name
