"""``[channels.<c>.tasks.<name>]``: parsing, and refusals that name the file, channel and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.changes import Op
from gateway.channels import Channel, load_channels
from gateway.errors import ConfigError
from gateway.filters import parse_filter

CHANNEL = """[channels.orders]
table = "public.orders"
operations = ["INSERT", "UPDATE", "DELETE"]
"""


def load(tmp_path: Path, tasks: str) -> Channel:
    (tmp_path / "orders.toml").write_text(CHANNEL + tasks, encoding="utf-8")
    return load_channels(tmp_path).get("orders")


def refusal(tmp_path: Path, tasks: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, tasks)
    return str(caught.value)


def test_a_job_and_a_webhook(tmp_path: Path) -> None:
    channel = load(tmp_path, '''
[channels.orders.tasks.receipt]
operations = ["INSERT", "UPDATE"]
filter = "status=eq.paid"
job = "myapp.jobs:send_receipt"

[channels.orders.tasks.partner]
webhook = "https://partner.example/hooks/orders?v=1"
''')
    receipt, partner = channel.tasks
    assert receipt.name == "orders.receipt" and receipt.short_name == "receipt"
    assert receipt.operations == {Op.INSERT, Op.UPDATE}
    assert receipt.filter == parse_filter("status=eq.paid")
    assert receipt.job == "myapp.jobs:send_receipt" and receipt.webhook is None
    assert partner.operations == {Op.INSERT, Op.UPDATE, Op.DELETE}  # the channel's
    assert partner.filter is None and partner.job is None
    assert partner.webhook == "https://partner.example/hooks/orders?v=1"


@pytest.mark.parametrize(
    ("tasks", "key", "problem"),
    [
        ('[channels.orders.tasks.x]\noperations = ["INSERT"]\n', "tasks.x", "exactly one of"),
        ('[channels.orders.tasks.x]\njob = "a:b"\nwebhook = "https://h.example/"\n', "tasks.x",
         "exactly one of"),
        ('[channels.orders.tasks.x]\njob = "not a path"\n', "tasks.x.job", "dotted path"),
        ('[channels.orders.tasks.x]\nwebhook = "ftp://h.example/"\n', "tasks.x.webhook",
         "http(s) URL"),
        ('[channels.orders.tasks.x]\nwebhook = "https://u:p@h.example/"\n', "tasks.x.webhook",
         "credentials"),
        ('[channels.orders.tasks.x]\nwebhook = "https://h.example:99999/"\n', "tasks.x.webhook",
         "not a URL"),
        ('[channels.orders.tasks.x]\njob = "a:b"\nfilter = "status=like.x"\n', "tasks.x.filter",
         "unknown operator"),
        ('[channels.orders.tasks.x]\njob = "a:b"\noperations = ["TRUNCATE"]\n',
         "tasks.x.operations", "TRUNCATE not in the channel's operations"),
        ('[channels.orders.tasks.x]\njob = "a:b"\noperations = ["UPSERT"]\n',
         "tasks.x.operations", "allowed"),
        ('[channels.orders.tasks.x]\njob = "a:b"\nretries = 3\n', "tasks.x.retries",
         "unknown key"),
        ('[channels.orders.tasks.X]\njob = "a:b"\n', "tasks.X", "must match"),
        ('[channels.orders]\ntasks = 3\n', "tasks", "table of tasks"),
    ],
)
def test_refusals_name_file_channel_and_key(
    tmp_path: Path, tasks: str, key: str, problem: str
) -> None:
    if tasks.startswith("[channels.orders]\n"):  # the channel itself, with a bad 'tasks'
        (tmp_path / "orders.toml").write_text(
            tasks + 'table = "public.orders"\n', encoding="utf-8"
        )
        with pytest.raises(ConfigError) as caught:
            load_channels(tmp_path)
        message = str(caught.value)
    else:
        message = refusal(tmp_path, tasks)
    assert message.startswith(f"orders.toml: channel 'orders': key '{key}': "), message
    assert problem in message


def test_a_filter_cannot_apply_to_truncate(tmp_path: Path) -> None:
    (tmp_path / "t.toml").write_text(
        '[channels.t]\ntable = "t"\n[channels.t.tasks.x]\njob = "a:b"\nfilter = "id=eq.1"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match="key 'tasks.x.filter': cannot apply to TRUNCATE"):
        load_channels(tmp_path)
