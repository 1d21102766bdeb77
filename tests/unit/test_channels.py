"""gateway.channels: loading channels/*.toml, topic bases from claims and rows, projection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Claims
from gateway.changes import Op
from gateway.channels import Channel, ChannelSet, Partition, load_channels
from gateway.errors import ConfigError, GatewayError

CHANNELS = Path(__file__).resolve().parents[2] / "channels"


def make_claims(
    raw: dict[str, Any] | None = None, scopes: tuple[str, ...] = (), sub: str | None = "user-1"
) -> Claims:
    payload: dict[str, Any] = {} if sub is None else {"sub": sub}
    payload.update(raw or {})
    return Claims(
        raw=payload,
        subject=sub,
        scopes=frozenset(scopes),
        expires_at=2_000_000_000.0,
        role="authenticated",
    )


def make_channel(**overrides: Any) -> Channel:
    values: dict[str, Any] = {
        "name": "things",
        "schema": "public",
        "table": "things",
        "operations": frozenset(Op),
        "scopes": frozenset(),
        "columns": None,
        "filterable": None,
        "partition": None,
        "source": "things.toml",
    }
    values.update(overrides)
    return Channel(**values)


def load_one(tmp_path: Path, text: str, name: str = "bad.toml") -> ChannelSet:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return load_channels(tmp_path)


def config_error(tmp_path: Path, text: str, name: str = "bad.toml") -> str:
    with pytest.raises(ConfigError) as caught:
        load_one(tmp_path, text, name)
    return str(caught.value)


# --- the real channels/ folder -------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> ChannelSet:
    return load_channels(CHANNELS)


def test_real_folder_has_two_channels(real: ChannelSet) -> None:
    assert len(real) == 2
    assert sorted(c.name for c in real) == ["my_notifications", "orders"]
    # customers: the orders' lookup reads it, and its changes keep the cache true;
    # user_roles: [roles] follows it to grant and revoke live
    assert real.tables == [("public", "customers"), ("public", "notifications"),
                           ("public", "orders"), ("public", "user_roles")]
    assert [c.name for c in real.by_table[("public", "orders")]] == ["orders"]


def test_real_orders_channel(real: ChannelSet) -> None:
    orders = real.get("orders")
    assert (orders.schema, orders.table) == ("public", "orders")
    assert orders.operations == frozenset({Op.INSERT, Op.UPDATE, Op.DELETE, Op.TRUNCATE})
    assert orders.scopes == frozenset({"orders:read"})
    assert orders.columns == ("id", "customer_id", "status", "total", "created_at", "updated_at")
    assert orders.filterable == frozenset({"id", "customer_id", "status", "total"})
    assert orders.partition is None
    assert orders.source == "orders.toml"
    assert [(lk.name, lk.table, lk.key, lk.columns) for lk in orders.lookups] == [
        ("customer", "customers", (("customer_id", "id"),), ("name", "tier"))
    ]


def test_real_notifications_channel(real: ChannelSet) -> None:
    notes = real.get("my_notifications")
    assert (notes.schema, notes.table) == ("public", "notifications")
    assert notes.operations == frozenset({Op.INSERT, Op.UPDATE, Op.DELETE})
    assert notes.scopes == frozenset()
    assert notes.columns == ("id", "user_id", "title", "body", "read", "created_at")
    assert notes.filterable == frozenset({"read"})
    assert notes.partition == Partition(column="user_id", claim="sub")
    assert notes.source == "notifications.toml"


def test_projection_keeps_the_channels_columns_in_their_order(real: ChannelSet) -> None:
    notes = real.get("my_notifications")
    row = {"id": 1, "user_id": "u", "title": "t", "body": "b", "read": False, "created_at": "c"}
    assert notes.project(row) is row  # exactly the channel's columns: nothing to take out
    shuffled = dict(reversed(row.items()))
    assert list(notes.project(shuffled) or ()) == list(notes.columns)
    assert notes.project({**row, "secret": 1}) == row
    assert notes.project({"id": 1, "secret": 1}) == {"id": 1}
    assert notes.project(None) is None


def test_unknown_channel_name(real: ChannelSet) -> None:
    with pytest.raises(GatewayError) as caught:
        real.get("nope")
    assert caught.value.code == "unknown_channel"
    assert "'nope'" in caught.value.message


# --- valid files in temporary folders --------------------------------------------------------


def test_minimal_channel_gets_defaults(tmp_path: Path) -> None:
    channels = load_one(tmp_path, '[channels.things]\ntable = "things"\n', "things.toml")
    things = channels.get("things")
    assert (things.schema, things.table) == ("public", "things")
    assert things.operations == frozenset(Op)
    assert things.scopes == frozenset()
    assert things.columns is None
    assert things.filterable is None
    assert things.partition is None
    assert things.source == "things.toml"


def test_operations_are_case_insensitive(tmp_path: Path) -> None:
    text = '[channels.t]\ntable = "app.t"\noperations = ["insert", "Delete"]\n'
    channel = load_one(tmp_path, text).get("t")
    assert channel.operations == frozenset({Op.INSERT, Op.DELETE})
    assert channel.schema == "app"


def test_filterable_defaults_to_columns(tmp_path: Path) -> None:
    channel = load_one(tmp_path, '[channels.t]\ntable = "t"\ncolumns = ["a", "b"]\n').get("t")
    assert channel.columns == ("a", "b")
    assert channel.filterable == frozenset({"a", "b"})


def test_empty_filterable_allows_no_filter(tmp_path: Path) -> None:
    text = '[channels.t]\ntable = "t"\ncolumns = ["a"]\nfilterable = []\n'
    channel = load_one(tmp_path, text).get("t")
    assert channel.filterable == frozenset()
    with pytest.raises(GatewayError) as caught:
        channel.filter_for("a=eq.1")
    assert caught.value.code == "bad_filter"
    assert "filterable: none" in caught.value.message


def test_partition_without_columns(tmp_path: Path) -> None:
    text = '[channels.t]\ntable = "t"\npartition = { column = "team", claim = "app.team" }\n'
    assert load_one(tmp_path, text).get("t").partition == Partition("team", "app.team")


def test_channels_from_several_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[channels.a]\ntable = "shared"\n')
    (tmp_path / "b.toml").write_text('[channels.b]\ntable = "public.shared"\n')
    (tmp_path / "notes.txt").write_text("not a channel file")
    channels = load_channels(tmp_path)
    assert sorted(c.name for c in channels) == ["a", "b"]
    assert [c.name for c in channels.by_table[("public", "shared")]] == ["a", "b"]
    assert channels.get("b").source == "b.toml"


# --- bad files: the message names the file, the channel and the key -------------------------


BASE = '[channels.things]\ntable = "public.things"\n'


@pytest.mark.parametrize(
    ("text", "key", "detail"),
    [
        (BASE + 'colour = "red"\n', "colour", "unknown key"),
        ("[channels.things]\nscopes = []\n", "table", "required"),
        ("[channels.things]\ntable = 5\n", "table", "required"),
        ('[channels.things]\ntable = "a.b.c"\n', "table", "is not schema.table"),
        ('[channels.things]\ntable = "public.1x"\n', "table", "is not schema.table"),
        (BASE + 'operations = ["UPSERT"]\n', "operations", "allowed: INSERT"),
        (BASE + "operations = []\n", "operations", "at least one operation"),
        (BASE + 'operations = "INSERT"\n', "operations", "list of non-empty strings"),
        (BASE + "operations = [1]\n", "operations", "list of non-empty strings"),
        (BASE + 'scopes = "orders:read"\n', "scopes", "list of non-empty strings"),
        (BASE + 'scopes = [""]\n', "scopes", "list of non-empty strings"),
        (BASE + "scopes = { read = true }\n", "scopes", "list of non-empty strings"),
        (BASE + 'columns = "id"\n', "columns", "list of non-empty strings"),
        (BASE + "columns = []\n", "columns", "at least one column"),
        (BASE + 'columns = ["id", "a-b"]\n', "columns", "'a-b' is not a column name"),
        (BASE + 'filterable = "id"\n', "filterable", "list of non-empty strings"),
        (BASE + 'filterable = ["1x"]\n', "filterable", "'1x' is not a column name"),
        (
            BASE + 'columns = ["id"]\nfilterable = ["id", "status", "total"]\n',
            "filterable",
            "status, total not in 'columns'",
        ),
        (
            BASE + '[channels.things.partition]\ncolumn = "user_id"\n',
            "partition",
            "exactly 'column' and 'claim'",
        ),
        (
            BASE + '[channels.things.partition]\nclaim = "sub"\n',
            "partition",
            "exactly 'column' and 'claim'",
        ),
        (
            BASE + '[channels.things.partition]\ncolumn = "u"\nclaim = "sub"\nextra = 1\n',
            "partition",
            "exactly 'column' and 'claim'",
        ),
        (BASE + 'partition = "user_id"\n', "partition", "must be a table"),
        (
            BASE + '[channels.things.partition]\ncolumn = "user-id"\nclaim = "sub"\n',
            "partition",
            "'user-id' is not a column name",
        ),
        (
            BASE + '[channels.things.partition]\ncolumn = "user_id"\nclaim = ""\n',
            "partition",
            "claim must be a claim path",
        ),
        (
            BASE + '[channels.things.partition]\ncolumn = "user_id"\nclaim = 3\n',
            "partition",
            "claim must be a claim path",
        ),
        (
            BASE
            + 'columns = ["id", "title"]\n'
            + '[channels.things.partition]\ncolumn = "user_id"\nclaim = "sub"\n',
            "partition",
            "'user_id' must be in 'columns'",
        ),
    ],
)
def test_bad_channel_key(tmp_path: Path, text: str, key: str, detail: str) -> None:
    message = config_error(tmp_path, text)
    assert message.startswith("bad.toml: ")
    assert "channel 'things'" in message
    assert f"key {key!r}" in message
    assert detail in message


def test_bad_channel_name(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[channels.Orders]\ntable = "orders"\n')
    assert "bad.toml" in message
    assert "'Orders'" in message
    assert "name must match" in message


@pytest.mark.parametrize("name", ["1orders", "or ders", "orders!", "x" * 64, "has.dot", "_x", ""])
def test_more_bad_channel_names(tmp_path: Path, name: str) -> None:
    message = config_error(tmp_path, f'[channels."{name}"]\ntable = "t"\n')
    assert "bad.toml" in message
    assert f"channel {name!r}" in message
    assert "name must match" in message


def test_longest_channel_name_is_accepted(tmp_path: Path) -> None:
    name = "x" * 63
    assert load_one(tmp_path, f'[channels.{name}]\ntable = "t"\n').get(name).name == name


def test_channel_that_is_not_a_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[channels]\nthings = 1\n")
    assert "bad.toml" in message
    assert "channel 'things'" in message
    assert "must be a table" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, BASE + "[other]\nx = 1\n")
    assert "bad.toml" in message
    assert "unknown top-level key 'other'" in message


def test_channels_key_not_a_table(tmp_path: Path) -> None:
    message = config_error(tmp_path, "channels = 1\n")
    assert "bad.toml" in message
    assert "key 'channels' must be a table" in message


def test_invalid_toml(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[channels.things\ntable = \n")
    assert message.startswith("bad.toml: not valid TOML")


def test_non_utf8_file(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b'[channels.t]\ntable = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_channels(tmp_path)
    assert str(caught.value).startswith("bad.toml: not valid TOML")


def test_duplicate_channel_across_two_files(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[channels.orders]\ntable = "orders"\n')
    (tmp_path / "b.toml").write_text('[channels.orders]\ntable = "orders_archive"\n')
    with pytest.raises(ConfigError) as caught:
        load_channels(tmp_path)
    message = str(caught.value)
    assert message.startswith("b.toml: ")
    assert "channel 'orders'" in message
    assert "already defined in a.toml" in message


def test_error_in_second_file_names_that_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[channels.good]\ntable = "t"\n')
    (tmp_path / "z.toml").write_text('[channels.broken]\ntable = "t"\nscopes = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_channels(tmp_path)
    message = str(caught.value)
    assert message.startswith("z.toml: ")
    assert "channel 'broken'" in message
    assert "key 'scopes'" in message


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_channels(tmp_path)
    assert str(tmp_path) in str(caught.value)
    assert "no channels defined" in str(caught.value)


def test_folder_with_files_but_no_channels(tmp_path: Path) -> None:
    (tmp_path / "empty.toml").write_text("# nothing yet\n")
    (tmp_path / "also.toml").write_text("[channels]\n")
    with pytest.raises(ConfigError, match="no channels defined"):
        load_channels(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as caught:
        load_channels(missing)
    assert str(missing) in str(caught.value)
    assert "channels folder not found" in str(caught.value)


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    file = tmp_path / "orders.toml"
    file.write_text(BASE)
    with pytest.raises(ConfigError, match="channels folder not found"):
        load_channels(file)


# --- topic_base: which topic a token may read -------------------------------------------------


def test_topic_base_forbidden_without_scope(real: ChannelSet) -> None:
    with pytest.raises(GatewayError) as caught:
        real.get("orders").topic_base(make_claims(scopes=("other:read",)))
    assert caught.value.code == "forbidden"
    assert "'orders'" in caught.value.message
    assert "orders:read" in caught.value.message


def test_topic_base_with_scope(real: ChannelSet) -> None:
    claims = make_claims(scopes=("orders:read", "other"))
    assert real.get("orders").topic_base(claims) == "orders"


def test_topic_base_names_every_missing_scope() -> None:
    channel = make_channel(scopes=frozenset({"b:read", "a:read", "c:read"}))
    with pytest.raises(GatewayError) as caught:
        channel.topic_base(make_claims(scopes=("c:read",)))
    assert caught.value.code == "forbidden"
    assert "'a:read b:read'" in caught.value.message


def test_partition_topic_from_sub(real: ChannelSet) -> None:
    channel = real.get("my_notifications")
    assert channel.topic_base(make_claims(sub="u-42")) == "my_notifications:user_id=u-42"
    assert channel.topic_base(make_claims(sub="u-7")) == "my_notifications:user_id=u-7"


def test_partition_claim_missing(real: ChannelSet) -> None:
    with pytest.raises(GatewayError) as caught:
        real.get("my_notifications").topic_base(make_claims(sub=None))
    assert caught.value.code == "partition_claim_missing"
    assert "'sub'" in caught.value.message
    assert "'my_notifications'" in caught.value.message


@pytest.mark.parametrize("value", [{"nested": 1}, ["a", "b"], None])
def test_partition_claim_that_is_not_a_scalar(value: Any) -> None:
    channel = make_channel(partition=Partition("team_id", "team"))
    with pytest.raises(GatewayError) as caught:
        channel.topic_base(make_claims({"team": value}))
    assert caught.value.code == "partition_claim_missing"


def test_dotted_claim_path() -> None:
    channel = make_channel(name="team", partition=Partition("team_id", "app_metadata.team_id"))
    claims = make_claims({"app_metadata": {"team_id": 7, "role": "x"}})
    assert channel.topic_base(claims) == "team:team_id=7"
    with pytest.raises(GatewayError) as caught:
        channel.topic_base(make_claims({"app_metadata": {"other": 1}}))
    assert caught.value.code == "partition_claim_missing"
    assert "'app_metadata.team_id'" in caught.value.message
    with pytest.raises(GatewayError):
        channel.topic_base(make_claims({"app_metadata": "team-7"}))


def test_scope_is_checked_before_the_partition() -> None:
    channel = make_channel(scopes=frozenset({"s"}), partition=Partition("user_id", "sub"))
    with pytest.raises(GatewayError) as caught:
        channel.topic_base(make_claims(sub=None))
    assert caught.value.code == "forbidden"
    assert channel.topic_base(make_claims(scopes=("s",), sub="me")) == "things:user_id=me"


def test_claim_and_row_give_the_same_topic(real: ChannelSet) -> None:
    channel = real.get("my_notifications")
    from_claims = channel.topic_base(make_claims(sub="abc"))
    assert channel.topic_base_for({"user_id": "abc", "id": 1}) == from_claims


# --- topic_base_for: which topic a row belongs to ---------------------------------------------


def test_topic_base_for_unpartitioned(real: ChannelSet) -> None:
    assert real.get("orders").topic_base_for(None) == "orders"
    assert real.get("orders").topic_base_for({"id": 1}) == "orders"


def test_topic_base_for_partitioned(real: ChannelSet) -> None:
    channel = real.get("my_notifications")
    assert channel.topic_base_for(None) is None
    assert channel.topic_base_for({"id": 1}) is None
    assert channel.topic_base_for({"id": 1, "user_id": None}) is None
    assert channel.topic_base_for({"user_id": "u1"}) == "my_notifications:user_id=u1"
    assert channel.topic_base_for({"user_id": 5}) == "my_notifications:user_id=5"


# --- filter_for ---------------------------------------------------------------------------


def test_filter_for(real: ChannelSet) -> None:
    orders = real.get("orders")
    allowed = orders.filter_for("status=eq.paid,total=gt.5")
    assert allowed is not None and allowed.columns == {"status", "total"}
    assert orders.filter_for(None) is None
    with pytest.raises(GatewayError) as caught:
        orders.filter_for("status=eq.paid,created_at=gt.x,updated_at=lt.y")
    assert caught.value.code == "bad_filter"
    assert "created_at, updated_at" in caught.value.message
    assert "filterable: customer_id, id, status, total" in caught.value.message
    anything = make_channel().filter_for("anything=eq.1")  # filterable None: every column
    assert anything is not None and anything.columns == {"anything"}

















def test_partition_value_cannot_forge_a_filtered_topic() -> None:
    """A claim containing '?' must not produce the key of another user's filtered topic."""
    notes = load_channels(CHANNELS).get("my_notifications")
    victim = notes.topic_base(make_claims(sub="alice"))
    forged = notes.topic_base(make_claims(sub="alice?read=eq.true"))
    assert forged != f"{victim}?read=eq.true"
    assert "?" not in forged
    assert forged == "my_notifications:user_id=alice%3Fread%3Deq.true"


def test_channel_name_with_a_trailing_newline_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[channels."orders\\n"]\ntable = "public.orders\\n"\n')
    with pytest.raises(ConfigError):
        load_channels(tmp_path)


# --- enrich: lookups declared per channel ------------------------------------------------------

ORDERS_WITH = '[channels.orders]\ntable = "public.orders"\ncolumns = ["id", "customer_id"]\n'


def test_a_lookup_is_read_with_its_table_key_and_columns(tmp_path: Path) -> None:
    loaded = load_one(tmp_path, ORDERS_WITH + (
        '[channels.orders.enrich.customer]\ntable = "public.customers"\n'
        'key = { customer_id = "id" }\ncolumns = ["name", "tier"]\n'
    ))
    [lookup] = loaded.get("orders").lookups
    assert (lookup.name, lookup.schema, lookup.table) == ("customer", "public", "customers")
    assert lookup.key == (("customer_id", "id"),) and lookup.columns == ("name", "tier")
    assert loaded.lookups_by_table == {("public", "customers"): [lookup]}
    assert ("public", "customers") in loaded.tables  # its changes are needed: invalidation
    assert lookup.key_of({"customer_id": 7}) == (7,) and lookup.key_of({"x": 1}) is None


@pytest.mark.parametrize(
    ("lookup", "problem"),
    [
        ('table = "public.c"\nkey = { customer_id = "id" }\n', "'enrich.customer.columns'"),
        ('table = "public.c"\ncolumns = ["n"]\n', "'enrich.customer.key'"),
        ('table = "c d"\nkey = { a = "b" }\ncolumns = ["n"]\n', "'enrich.customer.table'"),
        ('table = "c"\nkey = { a = "b c" }\ncolumns = ["n"]\n', "'b c' is not a column name"),
        ('table = "c"\nkey = { a = "b" }\ncolumns = ["n;"]\n', "'enrich.customer.columns'"),
        ('table = "c"\nkey = { a = "b" }\ncolumns = ["n"]\nttl = 1\n', "unknown key"),
    ],
)
def test_a_bad_lookup_names_file_channel_and_key(
    tmp_path: Path, lookup: str, problem: str
) -> None:
    message = config_error(tmp_path, ORDERS_WITH + "[channels.orders.enrich.customer]\n" + lookup)
    assert message.startswith("bad.toml: channel 'orders': key ")
    assert problem in message


def test_a_lookup_cannot_shadow_a_column(tmp_path: Path) -> None:
    message = config_error(tmp_path, ORDERS_WITH + (
        '[channels.orders.enrich.id]\ntable = "c"\nkey = { customer_id = "id" }\n'
        'columns = ["n"]\n'
    ))
    assert "already a column" in message


def test_a_custom_enricher_and_on_error_are_read(tmp_path: Path) -> None:
    loaded = load_one(tmp_path, ORDERS_WITH + 'on_error = "drop"\n' + (
        '[channels.orders.enrich.avatar]\nenricher = "myapp.enrich:add_avatar"\n'
        'timeout_ms = 50\n'
    ))
    orders = loaded.get("orders")
    assert [(e.name, e.path, e.timeout_ms) for e in orders.enrichers] == [
        ("avatar", "myapp.enrich:add_avatar", 50)
    ]
    assert orders.drop_unenriched and orders.lookups == ()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('enricher = "not a path"\n', "'enrich.avatar.enricher'"),
        ('enricher = "m:f"\ntimeout_ms = 0\n', "'enrich.avatar.timeout_ms'"),
        ('enricher = "m:f"\ntable = "c"\n', "unknown key"),
    ],
)
def test_a_bad_custom_enricher_names_its_key(tmp_path: Path, body: str, problem: str) -> None:
    message = config_error(tmp_path, ORDERS_WITH + "[channels.orders.enrich.avatar]\n" + body)
    assert problem in message


def test_on_error_is_mark_or_drop(tmp_path: Path) -> None:
    assert "'on_error'" in config_error(tmp_path, ORDERS_WITH + 'on_error = "retry"\n')


def test_rls_is_check_or_trust(tmp_path: Path) -> None:
    assert load_one(tmp_path, ORDERS_WITH + 'rls = "trust"\n').get("orders").trust_rls
    assert not load_one(tmp_path, ORDERS_WITH).get("orders").trust_rls
    assert "'rls'" in config_error(tmp_path, ORDERS_WITH + 'rls = "off"\n')
