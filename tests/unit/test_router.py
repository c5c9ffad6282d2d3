"""Router: every rule of DESIGN 5 "Address resolution", their priority, and the graph checks."""

from __future__ import annotations

import pytest

from lib.config.router import LOCAL, REJECTED, REMOTE
from lib.core.addresses import Address, parse_mailbox
from lib.core.errors import ConfigError

from ..helpers.ini import config_text

DOMAINS = """
example.org = *
example.net = *
shop.example.com = alice, bhayden
example.com = bhayden
"""
MAILBOXES = "bhayden = {hash}\nalice = {hash}\ncarol = {hash}\n"
POSTMASTER = "postmaster = bhayden\n"
ALIASES = """
sales@example.net = alice, bhayden
sales = carol
info = alice
info@example.net = bhayden
@example.com = bhayden
alice@example.com = carol
old = bhayden@gmail.example
both = bhayden, bhayden@gmail.example, BHayden@Example.ORG
team = sales@example.net, alice
"""


def map_config(server: str = "", aliases: str = POSTMASTER + ALIASES) -> str:
    """The config these tests route with; lines added to it are more aliases."""
    return config_text(server=server, domains=DOMAINS, mailboxes=MAILBOXES, aliases=aliases)


MAP = map_config()


def resolve(router_, text):
    return router_.resolve(parse_mailbox(text, utf8=True))


@pytest.fixture
def r(router):
    return router(MAP)


def test_remote_domain_is_remote(r):
    res = resolve(r, "someone@gmail.example")
    assert res.result == REMOTE
    assert res.mailboxes == () and [str(a) for a in res.forward] == ["someone@gmail.example"]
    assert "not one of this server's domains" in res.reason


def test_mailbox_at_domain_serving_all(r):
    res = resolve(r, "alice@example.org")
    assert (res.result, res.mailboxes, res.forward) == (LOCAL, ("alice",), ())
    assert "serves every mailbox" in res.reason


def test_case_insensitive_domain_and_local_part(r):
    assert resolve(r, "ALICE@Example.ORG").mailboxes == ("alice",)


def test_delimiter_extension_dropped(r):
    res = resolve(r, "BHayden+lists@Example.NET")
    assert res.mailboxes == ("bhayden",)
    assert "'+lists' is dropped" in res.reason


def test_delimiter_off(router):
    rt = router(map_config(server="recipient_delimiter ="))
    assert resolve(rt, "bhayden+lists@example.org").result == REJECTED


def test_several_delimiters_and_full_form_first(router):
    rt = router(map_config(server="recipient_delimiter = +-")
                + "bhayden-news@example.org = alice\n")
    assert resolve(rt, "bhayden-x@example.org").mailboxes == ("bhayden",)
    assert resolve(rt, "bhayden+x@example.org").mailboxes == ("bhayden",)
    # an alias naming the extended form itself wins over dropping the extension
    assert resolve(rt, "bhayden-news@example.org").mailboxes == ("alice",)


def test_leading_delimiter_is_not_an_extension(r):
    assert resolve(r, "+alice@example.org").result == REJECTED


def test_domain_alias_beats_bare_alias(r):
    assert resolve(r, "sales@example.net").mailboxes == ("alice", "bhayden")
    assert resolve(r, "sales@example.org").mailboxes == ("carol",)


def test_bare_alias_beats_mailbox(router):
    rt = router(MAP + "alice = carol\n")
    res = resolve(rt, "alice@example.org")
    assert res.mailboxes == ("carol",)
    assert "at every local domain" in res.reason


def test_domain_alias_beats_mailbox(r):
    assert resolve(r, "alice@example.com").mailboxes == ("carol",)


def test_mailbox_beats_catch_all(r):
    assert resolve(r, "bhayden@example.com").mailboxes == ("bhayden",)


def test_catch_all_takes_the_rest(r):
    res = resolve(r, "whatever@example.com")
    assert res.mailboxes == ("bhayden",)
    assert "catch-all @example.com" in res.reason


def test_mailbox_not_served_by_domain_falls_to_catch_all(r):
    res = resolve(r, "carol@example.com")     # carol exists; example.com serves only bhayden
    assert res.mailboxes == ("bhayden",)
    assert "does not serve it" in res.reason


def test_mailbox_not_served_and_no_catch_all_is_rejected(r):
    res = resolve(r, "carol@shop.example.com")
    assert res.result == REJECTED and res.mailboxes == () and res.forward == ()
    assert "550 5.1.1" in res.reason and "does not serve it" in res.reason


def test_unknown_local_part_rejected(r):
    assert resolve(r, "nobody@example.org").result == REJECTED


def test_forward_to_outside_address(r):
    res = resolve(r, "old@example.net")
    assert res.result == LOCAL
    assert res.mailboxes == () and [str(a) for a in res.forward] == ["bhayden@gmail.example"]
    assert "forwarded to bhayden@gmail.example" in res.reason


def test_keep_a_copy_and_forward_with_duplicates_removed(r):
    res = resolve(r, "both@example.org")
    assert res.mailboxes == ("bhayden",)             # the mailbox and BHayden@Example.ORG
    assert [str(a) for a in res.forward] == ["bhayden@gmail.example"]


def test_recursive_expansion(r):
    res = resolve(r, "team@example.org")
    assert res.mailboxes == ("alice", "bhayden")


def test_bare_target_can_name_a_group(router):
    rt = router(MAP + "admins = bhayden, alice\nnoc = admins\n")
    assert resolve(rt, "noc@example.org").mailboxes == ("bhayden", "alice")


def test_quoted_and_routing_characters_are_literal(r):
    for text in ('"bhayden@example.org"@example.com', "bhayden%example.org@example.com",
                 "example.org!bhayden@example.com"):
        res = resolve(r, text)
        assert res.rule == "catch-all @example.com", text    # never routed elsewhere
    assert resolve(r, '"bhayden%x"@example.org').result == REJECTED


def test_quoted_plain_local_part_matches(r):
    assert resolve(r, '"alice"@example.org').mailboxes == ("alice",)


def test_postmaster_everywhere(r):
    for domain in ("example.org", "example.net", "shop.example.com", "example.com"):
        assert resolve(r, f"PostMaster@{domain}").mailboxes == ("bhayden",)


def test_json_shape(r):
    data = resolve(r, "sales@example.net").as_json("Sales@Example.NET")
    assert data == {"address": "Sales@Example.NET", "result": "local",
                    "mailboxes": ["alice", "bhayden"], "forward": [],
                    "reason": data["reason"]}
    assert data["reason"]


def test_login_names(r):
    assert r.login("Alice") == "alice"
    assert r.login("alice@example.org") == "alice"
    assert r.login("alice@shop.example.com") == "alice"
    assert r.login("alice@example.com") is None       # example.com does not serve alice
    assert r.login("alice@gmail.example") is None
    assert r.login("sales") is None                    # an alias is not a login


def test_owns_sender(r):
    assert r.owns("alice", parse_mailbox("sales@example.net"))
    assert r.owns("bhayden", parse_mailbox("anything@example.com"))
    assert not r.owns("alice", parse_mailbox("bhayden@example.org"))
    assert not r.owns("alice", parse_mailbox("alice@gmail.example"))


# ---------------------------------------------------------------- graph errors

def test_alias_loop_is_a_config_error(router):
    with pytest.raises(ConfigError) as caught:
        router(MAP + "a = b@example.org\nb = a@example.org\n")
    error = caught.value
    assert error.section == "aliases" and error.key in ("a", "b")
    assert "alias loop" in str(error)


def test_self_loop_through_own_domain(router):
    with pytest.raises(ConfigError) as caught:
        router(MAP + "loop = loop@example.org\n")
    assert "alias loop" in str(caught.value) and caught.value.key == "loop"


def test_chain_deeper_than_ten_is_an_error(router):
    chain = "".join(f"c{i} = c{i + 1}@example.org\n" for i in range(11)) + "c11 = alice\n"
    with pytest.raises(ConfigError) as caught:
        router(MAP + chain)
    assert "deeper than 10" in str(caught.value)


def test_chain_of_ten_is_fine(router):
    chain = "".join(f"c{i} = c{i + 1}@example.org\n" for i in range(9)) + "c9 = alice\n"
    rt = router(MAP + chain)
    assert resolve(rt, "c0@example.org").mailboxes == ("alice",)


def test_target_that_goes_nowhere(router):
    with pytest.raises(ConfigError) as caught:
        router(MAP + "x = nobody@example.org\n")
    assert caught.value.key == "x" and "does not exist" in str(caught.value)


def test_bare_target_that_is_nothing(router):
    with pytest.raises(ConfigError) as caught:
        router(MAP + "x = nobody\n")
    assert "neither a mailbox nor an alias" in str(caught.value)


def test_postmaster_must_reach_a_mailbox(router):
    with pytest.raises(ConfigError) as caught:
        router(map_config(aliases=ALIASES))
    # example.org serves every mailbox but has no postmaster mailbox
    assert caught.value.section == "domains" and "postmaster@" in str(caught.value)
    assert "RFC 5321" in str(caught.value)


def test_postmaster_satisfied_by_catch_all(router):
    rt = router(config_text(data_dir="d", domains="only.example = bob",
                            mailboxes="bob = {hash}", aliases="@only.example = bob"))
    assert resolve(rt, "postmaster@only.example").mailboxes == ("bob",)


def test_postmaster_forward_only_is_refused(router):
    with pytest.raises(ConfigError):
        router(map_config(aliases="postmaster = admin@gmail.example\n" + ALIASES))


def test_address_resolution_is_the_same_object_type(r):
    res = resolve(r, "Alice@Example.org")
    assert isinstance(res.address, Address) and res.address.domain == "example.org"
