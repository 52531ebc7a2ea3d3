"""Searching a member's own thread (sudo_api/search.py) on a real SQLite database with the FTS5
index the migration makes: what is found, what never is (another member's thread, another
family's, the Home thread), that the index follows inserts, edits and deletes (cascades too) and
is built from the rows a database already had, that no query is a 500, and the pages and /v1
that show a match in its place."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from api_services import offline_services

from sudo_api.app import build_app
from sudo_api.history import ChatStore
from sudo_api.search import MATCHES_MAX, QUERY_MAX, fts_query, search
from sudo_core.accounts import InvalidInput
from sudo_core.db import MIGRATIONS, Database, _statements

PASSWORD = "a long password"


class Thread:
    """A member's thread on the store, messages added as the chat adds them."""

    def __init__(self, store: ChatStore, family: uuid.UUID, member: uuid.UUID) -> None:
        self.store, self.family, self.member = store, family, member
        self.seq = 0

    def said(self, text: str) -> str:
        return self.store.add_user_message(self.family, self.member, text, "Ann").id

    def answered(self, reply_to: str, text: str) -> str:
        self.seq += 1
        answer_id = uuid.uuid4().hex
        event = {"type": "message", "id": answer_id, "text": text, "reply_to": reply_to, "seq": self.seq}
        self.store.apply(self.family, event)
        return answer_id


def member_of(db: Database, family: uuid.UUID, role: str = "owner") -> uuid.UUID:
    member = uuid.uuid4()
    db.execute(
        "INSERT INTO accounts (id, email, password_hash, display_name, family_id, role, created_at)"
        " VALUES (?, ?, 'x', 'Ann', ?, ?, ?)",
        (str(member), f"{member.hex}@example.org", str(family), role, time.time()),
    )
    return member


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "sudo.db")
    yield database
    database.close()


def on_db_thread(db: Database, fn, *args):
    """Run `fn` on the database's own thread, as sudo-api does."""
    return db._executor.submit(fn, *args).result()


def ids(matches) -> list[str]:
    return [m.id for m in matches]


def integrity_check(db: Database) -> None:
    """FTS5 compares its index with the messages it indexes; raises if they differ."""
    db.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")


def test_a_member_finds_their_own_messages_newest_first_with_the_words_marked(db):
    def scenario():
        family = db.create_family("Oaks").id
        ann = Thread(ChatStore(db), family, member_of(db, family))
        asked = ann.said("What should I cook with pasta tonight?")
        answer = ann.answered(asked, "Try **pasta** alla norma: aubergines, tomatoes, ricotta.")
        ann.said("and a dessert?")
        later = ann.said("PASTAS for tomorrow, please")
        found = search(db, family, ann.member, "pasta")
        assert ids(found) == [later, answer, asked]  # newest first, any case, a word's start
        assert [m.role for m in found] == ["user", "assistant", "user"]
        assert found[1].snippet == "Try **pasta** alla norma: aubergines, tomatoes, ricotta."
        assert found[1].snippet_html == (
            "Try **<mark>pasta</mark>** alla norma: aubergines, tomatoes, ricotta."
        )
        assert ids(search(db, family, ann.member, "pasta tonight")) == [asked]  # every word
        assert ids(search(db, family, ann.member, "tonight pasta")) == [asked]  # in any order
        assert search(db, family, ann.member, "pizza") == []
        assert ids(search(db, family, ann.member, "aubergine")) == [answer]
        assert ids(search(db, family, ann.member, "pasta", 1)) == [later]

    on_db_thread(db, scenario)


def test_accents_and_case_fold_and_a_snippet_is_only_text(db):
    def scenario():
        family = db.create_family("Oaks").id
        ann = Thread(ChatStore(db), family, member_of(db, family))
        cafe = ann.said("Meet at the Café <b>Flore</b> & bring <script>alert(1)</script>")
        [match] = search(db, family, ann.member, "cafe")
        assert match.id == cafe
        assert match.snippet_html.startswith("Meet at the <mark>Café</mark> &lt;b&gt;Flore&lt;/b&gt; &amp;")
        assert "<script>" not in match.snippet_html and "&lt;script&gt;" in match.snippet_html
        # A message holding FTS5's own markers only ever marks: the parts stay balanced text.
        odd = ann.said("odd \x02marker\x03 text \x03 here")
        [match] = search(db, family, ann.member, "odd")
        assert match.id == odd and match.snippet_html.count("<mark>") == match.snippet_html.count("</mark>")
        assert "\x02" not in match.snippet and "\x03" not in match.snippet

    on_db_thread(db, scenario)


def test_no_member_finds_another_members_or_another_familys_messages_nor_the_home_thread(db):
    def scenario():
        store = ChatStore(db)
        family = db.create_family("Oaks").id
        a = Thread(store, family, member_of(db, family))
        b = Thread(store, family, member_of(db, family, "adult"))
        other_family = db.create_family("Elms").id
        c = Thread(store, other_family, member_of(db, other_family))
        secret = a.said("the surprise party is on friday")
        a.answered(secret, "I will keep the surprise party quiet.")
        mine = b.said("what is on friday?")
        c.said("our surprise party too")
        db.execute("INSERT INTO devices (id, family_id, name, token_hash, created_at) VALUES (?, ?, ?, ?, ?)",
                   (str(uuid.uuid4()), str(family), "Hall Pi", "h", time.time()))  # fmt: skip
        device = db.query_one("SELECT id FROM devices")["id"]
        store.add_voice_turn(family, uuid.UUID(device), "surprise party music", "Playing it.")
        assert search(db, family, b.member, "surprise") == []
        assert search(db, family, b.member, "party") == []
        assert ids(search(db, family, b.member, "friday")) == [mine]
        assert len(search(db, family, a.member, "surprise party")) == 2  # a's own, not the Home one
        assert len(search(db, other_family, c.member, "surprise")) == 1
        # A member of another family naming a's family still searches only their own account.
        assert search(db, family, c.member, "surprise") == []

    on_db_thread(db, scenario)


def test_the_index_follows_edits_and_deletes_cascaded_from_a_removed_member(db):
    def scenario():
        store = ChatStore(db)
        family = db.create_family("Oaks").id
        ann = Thread(store, family, member_of(db, family))
        asked = ann.said("remind me about the dentist")
        answer = ann.answered(asked, "Noted: dentist.")
        edit = {"type": "edit", "id": answer, "text": "Noted: orthodontist on Monday.", "seq": 9}
        store.apply(family, edit)
        assert ids(search(db, family, ann.member, "orthodontist")) == [answer]
        assert ids(search(db, family, ann.member, "dentist")) == [asked]  # the old words are gone
        integrity_check(db)
        db.execute("DELETE FROM accounts WHERE id = ?", (str(ann.member),))  # cascades to the thread
        assert db.query("SELECT * FROM messages") == []
        assert db.query("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'dentist'") == []
        integrity_check(db)
        bob = Thread(store, family, member_of(db, family))
        bob.said("dentist again")
        db.delete_family(family)
        assert db.query("SELECT rowid FROM messages_fts WHERE messages_fts MATCH 'dentist'") == []
        integrity_check(db)

    on_db_thread(db, scenario)


def test_the_migration_indexes_the_messages_a_database_already_had(db):
    """The migration run on a database whose messages came before it: they are found."""

    def scenario():
        family = db.create_family("Oaks").id
        ann = Thread(ChatStore(db), family, member_of(db, family))
        old = ann.said("an old message about tulips")
        # As before the migration: no index, no triggers; a message added then.
        script = next(m for m in MIGRATIONS if "CREATE VIRTUAL TABLE messages_fts" in m)
        for name in ("messages_fts_insert", "messages_fts_delete", "messages_fts_update"):
            db.execute(f"DROP TRIGGER {name}")
        db.execute("DROP TABLE messages_fts")
        older = ann.said("and tulips again, before search existed")
        for statement in _statements(script):
            db.execute(statement)
        assert ids(search(db, family, ann.member, "tulips")) == [older, old]
        integrity_check(db)

    on_db_thread(db, scenario)


@pytest.mark.parametrize(
    "text",
    [
        'a"b', '"', '""', "*", "-x", "x OR y", "NOT", "AND", "NEAR(a b)", "a:b", "text:secret", "^start",
        "(", ")", "{a b}", "a + b", "'", "\\", "%", "_", "\x00", "a\x00b", "\x02", "…", "🙂", "é",
        "SELECT * FROM messages", "'; DROP TABLE messages; --", "a" * QUERY_MAX,
    ],
)  # fmt: skip
def test_no_query_is_an_error_but_a_refusal(db, text):
    def scenario():
        family = db.create_family("Oaks").id
        ann = Thread(ChatStore(db), family, member_of(db, family))
        ann.said('some text: a secret, in (brackets) and "quotes" 🙂')
        try:
            search(db, family, ann.member, text)
        except InvalidInput:
            assert text.strip("\x00 ") == ""  # only an empty search is refused
        assert db.query_one("SELECT count(*) FROM messages")[0] == 1

    on_db_thread(db, scenario)


def test_an_empty_too_long_or_too_wordy_search_is_refused():
    for text in ("", "   ", "\x00", "a" * (QUERY_MAX + 1), " ".join("w" * 17)):
        with pytest.raises(InvalidInput):
            fts_query(text)
    assert fts_query('say "hi"') == '"say"* """hi"""*'


def test_quoted_terms_match_what_they_say(db):
    def scenario():
        family = db.create_family("Oaks").id
        ann = Thread(ChatStore(db), family, member_of(db, family))
        both = ann.said("cats with dogs")
        ann.said("cats only")
        assert ids(search(db, family, ann.member, "cats AND dogs")) == []  # "AND" is a word here
        assert ids(search(db, family, ann.member, "dogs cats")) == [both]
        assert ids(search(db, family, ann.member, "cats OR dogs")) == []
        assert ids(search(db, family, ann.member, "NOT dogs")) == []

    on_db_thread(db, scenario)


# The pages and /v1, in process on the same kind of database.


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Database]]:
    async with (
        offline_services(tmp_path, "service") as services,
        TestClient(TestServer(build_app(services))) as test_client,
    ):
        yield test_client, services.db


async def sign_up(client: TestClient, name: str) -> tuple[dict[str, str], uuid.UUID, uuid.UUID]:
    """A new family's owner: their bearer headers, family and account."""
    body = {"email": f"{name}@example.org", "password": PASSWORD, "name": name, "family_name": name}
    resp = await client.post("/v1/auth/signup", json=body)
    assert resp.status == 201, await resp.text()
    made = await resp.json()
    account = made["account"]
    return (
        {"Authorization": f"Bearer {made['token']}"},
        uuid.UUID(account["user_id"]),
        uuid.UUID(account["id"]),
    )


async def test_v1_search_and_around_show_only_the_callers_own_thread(client):
    client, db = client
    a, family, a_id = await sign_up(client, "ann")
    b, other_family, b_id = await sign_up(client, "bea")
    store = ChatStore(db)
    ann = Thread(store, family, a_id)
    first = await db.aio(ann.said, "the first message")
    secret = await db.aio(ann.said, "the code of the safe is 4711")
    answer = await db.aio(ann.answered, secret, "Kept: **4711**.")
    fillers = [await db.aio(ann.said, f"filler {i}") for i in range(6)]
    await db.aio(Thread(store, other_family, b_id).said, "bea's own safe")

    resp = await client.get("/v1/chat/search", params={"q": "safe"}, headers=a)
    assert resp.status == 200
    [match] = (await resp.json())["matches"]
    assert match["id"] == secret and match["role"] == "user" and match["created_at"] > 0
    assert match["snippet_html"] == "the code of the <mark>safe</mark> is 4711"
    resp = await client.get("/v1/chat/search", params={"q": "4711"}, headers=b)
    assert resp.status == 200 and (await resp.json())["matches"] == []  # never another's thread
    resp = await client.get("/v1/chat/search", params={"q": "safe"}, headers=b)
    assert [m["snippet"] for m in (await resp.json())["matches"]] == ["bea's own safe"]

    resp = await client.get("/v1/chat/messages", params={"around": answer, "limit": "4"}, headers=a)
    around = await resp.json()
    assert resp.status == 200, around
    assert [m["id"] for m in around["messages"]] == [first, secret, answer, *fillers[:2]]
    assert not around["more"] and around["newer"]
    assert around["messages"][2]["html"] == "<p>Kept: <strong>4711</strong>.</p>"
    assert around["messages"][1]["html"] is None
    resp = await client.get("/v1/chat/messages", params={"around": fillers[2], "limit": "4"}, headers=a)
    around = await resp.json()
    assert [m["id"] for m in around["messages"]] == fillers[:5]
    assert around["more"] and around["newer"]
    resp = await client.get("/v1/chat/messages", params={"around": fillers[5], "limit": "4"}, headers=a)
    around = await resp.json()
    assert [m["id"] for m in around["messages"]] == fillers[3:] and around["more"] and not around["newer"]
    # Not in the caller's thread: B's own; A's Home thread; no such message.
    for params, caller in (
        ({"around": secret}, b),
        ({"around": secret, "thread": "home"}, a),
        ({"around": "no"}, a),
    ):
        resp = await client.get("/v1/chat/messages", params=params, headers=caller)
        assert resp.status == 404, await resp.text()
    resp = await client.get("/v1/chat/messages", params={"around": secret, "before": "3"}, headers=a)
    assert resp.status == 400


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({}, "type a word"),
        ({"q": "  "}, "type a word"),
        ({"q": "x" * (QUERY_MAX + 1)}, f"at most {QUERY_MAX} characters"),
        ({"q": "x", "limit": "many"}, "limit must be an integer"),
        ({"q": "x", "limit": str(MATCHES_MAX + 1)}, "limit must be between"),
    ],
)
async def test_v1_a_bad_search_is_a_clear_400(client, params, error):
    client, _ = client
    a, _, _ = await sign_up(client, "ann")
    resp = await client.get("/v1/chat/search", params=params, headers=a)
    assert resp.status == 400 and error in (await resp.json())["error"]


async def test_the_chat_page_searches_and_shows_a_match_in_its_place(client):
    client, db = client
    cookie, family, a_id = await sign_up(client, "ann")
    ann = Thread(ChatStore(db), family, a_id)
    asked = await db.aio(ann.said, "a <b>bold</b> question about otters")
    answer = await db.aio(ann.answered, asked, "Otters **hold hands** <img src=x onerror=alert(1)>")
    for i in range(30):
        await db.aio(ann.said, f"later {i}")

    page = await (await client.get("/chat", params={"q": "otters"}, headers=cookie)).text()
    results = page[page.index('id="results"') :]
    links = re.findall(r'href="(/chat\?around=[0-9a-f]+#m-[0-9a-f]+)"', results)
    assert links == [f"/chat?around={answer}#m-{answer}", f"/chat?around={asked}#m-{asked}"]
    assert "a &lt;b&gt;bold&lt;/b&gt; question about <mark>otters</mark>" in results

    resp = await client.get("/chat", params={"around": answer}, headers=cookie)
    page = await resp.text()
    assert resp.status == 200
    li = re.search(rf'<li id="m-{answer}" class="([^"]+)"[^>]*>(.*?)</li>', page, re.S)
    assert li is not None and "found" in li.group(1).split()
    assert '<div class="text md"><p>Otters <strong>hold hands</strong> &lt;img src=x' in li.group(2)
    assert "a &lt;b&gt;bold&lt;/b&gt; question" in page  # the member's own words: text
    assert 'data-newer="yes"' in page and 'id="send"' not in page and "later 29" not in page
    assert "back to the latest" in page

    for params in ({"q": ""}, {"q": "x" * (QUERY_MAX + 1)}):
        resp = await client.get("/chat", params=params, headers=cookie)
        assert resp.status == 400 and 'class="error"' in await resp.text()
    other, _, _ = await sign_up(client, "bea")
    resp = await client.get("/chat", params={"around": answer}, headers=other)
    assert resp.status == 404 and "Otters" not in await resp.text()
