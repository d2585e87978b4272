"""SMS commands: #keyword, #list, #who, #reset, opt-out/opt-in, HELP, allow-list, daily limit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from phischer.commands import RESERVED_WORDS, parse
from phischer.config import Settings
from phischer.inbound import HELP_TEXT, OPT_IN_TEXT
from phischer.models import Contact, Message
from phischer.personas import PersonaError, PersonaSpec, add_persona


def contact(app, phone="+15550100") -> Contact:
    with app.extensions["phischer"].db.read() as session:
        return session.scalar(sa.select(Contact).where(Contact.phone == phone))


def messages(app) -> list[Message]:
    with app.extensions["phischer"].db.read() as session:
        return list(session.scalars(sa.select(Message).order_by(Message.id)))


@pytest.mark.parametrize(
    ("body", "action", "keyword", "text"),
    [
        ("#ada", "switch", "ada", ""),
        ("#ADA  hello there ", "switch", "ada", "hello there"),
        ("#list", "list", None, ""),
        ("#Who", "who", None, ""),
        ("#reset", "reset", None, ""),
        ("STOP", "optout", None, ""),
        ("stop.", "optout", None, ""),
        ("Unsubscribe", "optout", None, ""),
        ("start", "optin", None, ""),
        ("YES", "optin", None, ""),
        ("help", "help", None, ""),
        ("INFO", "help", None, ""),
        ("please stop texting me", "chat", None, "please stop texting me"),
        ("#", "chat", None, "#"),
        # The words after a command ask nothing more; punctuation belongs to the sentence.
        ("#list everything", "list", None, ""),
        ("#list please", "list", None, ""),
        ("#who?", "who", None, ""),
        ("#who is this", "who", None, ""),
        ("#Reset!", "reset", None, ""),
        ("#ada!", "switch", "ada", ""),
        ("#ada, hi", "switch", "ada", "hi"),
        # Typed without a space: the punctuation still ends the keyword.
        ("#ada,hi", "switch", "ada", "hi"),
        ("#ada?!what", "switch", "ada", "what"),
        ("#ada...hi there", "switch", "ada", "hi there"),
        ("#list,please", "list", None, ""),
        ("#ada ?", "switch", "ada", "?"),  # punctuation after a space is the text's
        ("#ada's", "switch", "ada's", ""),  # no keyword holds it: unknown, shown whole
        ("#,hi", "chat", None, "#,hi"),
        ("＃ａｄａ，ｈｉ", "switch", "ada", "ｈｉ"),
        ("#ada?!", "switch", "ada", ""),
        ("#ada\thi there", "switch", "ada", "hi there"),
        ("#ada\nhello\nagain", "switch", "ada", "hello\nagain"),
        ("# ada", "chat", None, "# ada"),
        # A full-width keyboard (Japanese, Chinese) types the same commands; the words after
        # a keyword stay as typed.
        ("ＳＴＯＰ", "optout", None, ""),
        ("Ｓｔｏｐ。", "optout", None, ""),
        ("ｈｅｌｐ！", "help", None, ""),
        ("＃ｌｉｓｔ", "list", None, ""),
        ("＃ＡＤＡ　ｈｉ", "switch", "ada", "ｈｉ"),
        ("＃ ada", "chat", None, "＃ ada"),
    ],
)
def test_parse(body, action, keyword, text):
    command = parse(body)
    assert (command.action, command.keyword, command.text) == (action, keyword, text)


def test_switch_replies_with_greeting_and_sticks(app, twilio_post):
    assert twilio_post("#ada").replies == ["Ada here!"]
    assert twilio_post("#bo").replies == ["You're now texting Bo."]
    assert twilio_post("hey how are you").replies == ["yo. tired. u?"]
    assert twilio_post("#who").replies == ["You're texting Bo (#bo)."]
    assert contact(app).persona_id is not None


def test_commands_with_punctuation_or_extra_words_are_still_commands(app, twilio_post):
    assert twilio_post("#bo!").replies == ["You're now texting Bo."]
    assert twilio_post("#who?").replies == ["You're texting Bo (#bo)."]
    assert twilio_post("#list please").replies == ["Personas: #ada, #bo"]
    assert twilio_post("#nobody?").replies == ["No #nobody. Personas: #ada, #bo"]


def test_command_replies_fit_one_sms(make_app, personas, database, twilio_post):
    # 40 keywords of 50 letters: a list longer than one Twilio message (1,600 characters).
    with database.write() as session:
        for i in range(40):
            keyword = f"{i:02d}" + "k" * 48
            spec = PersonaSpec(name=f"P{i}", keyword=keyword, dataset=str(personas["bo"]))
            add_persona(session, spec)
    app = make_app(max_reply_chars=60)
    (reply,) = twilio_post("#" + "a" * 5000, target=app).replies
    assert reply.startswith("No #" + "a" * 30 + "…. Personas: #ada, #bo, #00kkk")
    assert len(reply) <= 1600 and reply.endswith("…")
    (listed,) = twilio_post("#list", target=app).replies
    assert len(listed) <= 1600 and listed.startswith("Personas: #ada, #bo, #00kkk")


def test_a_small_max_reply_chars_keeps_phischers_own_replies_whole(make_app, personas, twilio_post):
    # Carriers want HELP to say how to stop: MAX_REPLY_CHARS cuts what personas say, not
    # phischer's answers to commands.
    app = make_app(max_reply_chars=20)
    assert twilio_post("HELP", target=app).replies == [HELP_TEXT]
    assert twilio_post("#list", target=app).replies == ["Personas: #ada, #bo"]
    assert twilio_post("#who", target=app).replies == ["You're texting Ada (#ada)."]
    assert twilio_post("#nobody", target=app).replies == ["No #nobody. Personas: #ada, #bo"]
    assert twilio_post("STOP", target=app).replies == []
    assert twilio_post("START", target=app).replies == [OPT_IN_TEXT]
    # A greeting is the persona's words: cut as its replies are.
    assert twilio_post("#bo", target=app).replies == ["You're now texting…"]


def test_switch_with_text_answers_as_new_persona(app, twilio_post):
    assert twilio_post("#bo what do you do for work").replies == ["bike courier. legs of steel"]
    assert twilio_post("#who").replies == ["You're texting Bo (#bo)."]


def test_a_switch_typed_without_a_space_after_its_comma_answers_as_the_new_persona(
    app, twilio_post
):
    assert twilio_post("#bo,what do you do for work").replies == ["bike courier. legs of steel"]
    assert twilio_post("#who").replies == ["You're texting Bo (#bo)."]
    assert twilio_post("#nobody,hi").replies == ["No #nobody. Personas: #ada, #bo"]


def test_unknown_keyword_lists_keywords(app, twilio_post):
    r = twilio_post("#nobody")
    assert r.replies == ["No #nobody. Personas: #ada, #bo"]
    assert twilio_post("#who").replies == ["You're texting Ada (#ada)."]


def test_list_and_help(app, twilio_post):
    assert twilio_post("#list").replies == ["Personas: #ada, #bo"]
    help_text = twilio_post("HELP").replies[0]
    assert "#list" in help_text and "STOP" in help_text


def test_opt_out_silences_everything_until_opt_in(app, twilio_post, fake_openai):
    assert twilio_post("STOP").replies == []
    assert contact(app).opted_out is True
    assert twilio_post("hey how are you").replies == []
    assert twilio_post("#list").replies == []
    assert twilio_post("START").replies[0].startswith("You're back in")
    assert contact(app).opted_out is False
    assert twilio_post("hey how are you").replies == [
        "Splendid, thank you! Knitting a scarf for the cat."
    ]
    kinds = [(m.direction, m.kind, m.status) for m in messages(app)]
    assert kinds[:4] == [
        ("in", "command", "replied"),
        ("in", "optout", "ignored"),
        ("in", "optout", "ignored"),
        ("in", "command", "replied"),
    ]


@pytest.mark.parametrize("word", ["yes", "Start", "UNSTOP"])
def test_opt_in_words_are_ordinary_texts_unless_opted_out(app, twilio_post, word):
    # Someone who never texted STOP and answers "yes" is talking to the clone.
    answer = twilio_post(word).replies
    assert len(answer) == 1 and not answer[0].startswith("You're back in")
    (inbound, _) = messages(app)
    assert (inbound.kind, inbound.status) == ("chat", "replied")
    assert twilio_post("STOP").replies == []
    assert twilio_post(word).replies == [OPT_IN_TEXT]
    assert contact(app).opted_out is False


def test_a_full_width_stop_opts_out_and_a_full_width_keyword_switches(app, twilio_post):
    # "ＳＴＯＰ" from a phone in full-width mode means STOP: the clone must not chat back.
    assert twilio_post("ＳＴＯＰ", from_="+15550111").replies == []
    assert contact(app, "+15550111").opted_out is True
    assert twilio_post("＃ｂｏ").replies == ["You're now texting Bo."]


def test_info_is_help(app, twilio_post):
    assert twilio_post("info").replies == [HELP_TEXT]


@pytest.mark.parametrize("word", ["STOPALL", "cancel", "End", "QUIT", "revoke", "OPTOUT"])
def test_every_opt_out_word(app, twilio_post, word):
    assert twilio_post(word).replies == []
    assert contact(app).opted_out is True


def test_twilio_advanced_opt_out_keywords_in_any_language(app, twilio_post):
    # With Advanced Opt-Out Twilio names what it recognised (OptOutType) and sends its own
    # confirmation; phischer records it and stays silent, whatever the word was.
    assert twilio_post("ARRET", OptOutType="STOP").replies == []
    assert contact(app).opted_out is True
    assert twilio_post("hey how are you").replies == []
    assert twilio_post("AIDE", OptOutType="HELP").replies == []
    assert twilio_post("COMMENCER", OptOutType="START").replies == []
    assert contact(app).opted_out is False
    assert twilio_post("AIDE", OptOutType="HELP").replies == []
    assert twilio_post("hey how are you").replies == [
        "Splendid, thank you! Knitting a scarf for the cat."
    ]
    kinds = [(m.direction, m.kind, m.status, m.body) for m in messages(app)]
    assert kinds[:6] == [
        ("in", "command", "replied", "ARRET"),
        ("in", "optout", "ignored", "hey how are you"),
        ("in", "optout", "ignored", "AIDE"),  # opted out: even HELP is only stored
        ("in", "command", "replied", "COMMENCER"),
        ("in", "command", "replied", "AIDE"),
        ("in", "chat", "replied", "hey how are you"),
    ]


def test_twilio_opt_in_from_someone_never_opted_out_is_a_text(app, twilio_post):
    # "yes" is one of Twilio's opt-in words; from a number that never opted out it is an answer.
    assert len(twilio_post("yes", OptOutType="START").replies) == 1
    assert [(m.kind, m.status) for m in messages(app) if m.direction == "in"] == [
        ("chat", "replied")
    ]


def test_an_unknown_opt_out_type_changes_nothing(app, twilio_post):
    assert twilio_post("HELP", OptOutType="SOMETHING").replies == [HELP_TEXT]
    assert twilio_post("hello there", OptOutType="SOMETHING").replies != []


def test_opt_out_is_per_number(app, twilio_post):
    twilio_post("STOP", from_="+15550101")
    assert twilio_post("good night", from_="+15550102").replies == [
        "Sleep well, dear. Dream of engines."
    ]


def test_allow_list_refuses_without_reply(make_app, personas, twilio_post):
    app = make_app(allowed_numbers=frozenset({"+15550111"}))
    assert twilio_post("good night", from_="+15550999", target=app).replies == []
    refused = messages(app)
    assert [(m.kind, m.status) for m in refused] == [("refused", "refused")]
    ok = twilio_post("good night", from_="+15550111", target=app)
    assert ok.replies == ["Sleep well, dear. Dream of engines."]
    # Twilio's WhatsApp senders arrive as "whatsapp:+1…": the number is what is allowed.
    assert twilio_post("good night", from_="whatsapp:+15550111", target=app).replies


def test_stop_from_a_number_not_allowed_holds_once_it_is_allowed(make_app, personas, twilio_post):
    app = make_app(allowed_numbers=frozenset({"+15550111"}))
    assert twilio_post("STOP", from_="+15550999", target=app).replies == []
    assert [(m.kind, m.status) for m in messages(app)] == [("refused", "refused")]
    # The owner adds the number later: it said STOP, so the clone stays silent.
    app = make_app(allowed_numbers=frozenset({"+15550111", "+15550999"}))
    assert twilio_post("good night", from_="+15550999", target=app).replies == []
    assert [(m.kind, m.status) for m in messages(app)][-1] == ("optout", "ignored")
    assert twilio_post("START", from_="+15550999", target=app).replies
    assert twilio_post("good night", from_="+15550999", target=app).replies == [
        "Sleep well, dear. Dream of engines."
    ]


@pytest.mark.parametrize("entry", ["+44 (0)20 7946 0000", "0044 20 7946 0000", "+44-20-7946-0000"])
def test_an_allowed_number_written_as_people_write_it_is_answered(
    make_app, personas, twilio_post, entry
):
    # Read as persona route reads it: "(0)" and "00" once made "+4402079460000" and
    # "+00442079460000", which no From equals, and the one allowed number was refused.
    allowed = Settings.from_env({"ALLOWED_NUMBERS": f"{entry}, +1 555 010 0111"}).allowed_numbers
    app = make_app(allowed_numbers=allowed)
    assert twilio_post("good night", from_="+442079460000", target=app).replies == [
        "Sleep well, dear. Dream of engines."
    ]
    assert twilio_post("good night", from_="+15550100111", target=app).replies
    assert twilio_post("good night", from_="+442079460001", target=app).replies == []


def test_daily_limit_notices_once_then_silence(make_app, personas, twilio_post):
    app = make_app(daily_limit=2)
    assert twilio_post("hey how are you", target=app).replies
    assert twilio_post("good night", target=app).replies
    assert twilio_post("tell me a joke", target=app).replies == [
        "That's all I can answer today. Talk tomorrow!"
    ]
    assert twilio_post("tell me a joke", target=app).replies == []
    # Commands still work over the limit; other numbers are unaffected.
    assert twilio_post("#who", target=app).replies == ["You're texting Ada (#ada)."]
    assert twilio_post("good night", from_="+15550177", target=app).replies


def limit_answers(app, twilio_post, texts: int) -> list[str]:
    """What each of `texts` texts got: "reply", "notice" (DAILY_LIMIT's) or "nothing"."""
    notice = ["That's all I can answer today. Talk tomorrow!"]
    got = [twilio_post("good night", target=app).replies for _ in range(texts)]
    return ["nothing" if not r else "notice" if r == notice else "reply" for r in got]


@pytest.mark.parametrize(
    ("before_restart", "after_restart"),
    [
        # Two replies under DAILY_LIMIT=3, then a restart with 1: the number is past the new
        # limit, and its next text is the first it sends over it.
        (["reply", "reply"], ["notice", "nothing"]),
        # Told already under the old limit: still one notice that day.
        (["reply", "reply", "reply", "notice"], ["nothing", "nothing"]),
    ],
)
def test_a_lowered_daily_limit_still_notices_once_a_day(
    make_app, personas, twilio_post, before_restart, after_restart
):
    app = make_app(daily_limit=3)
    assert limit_answers(app, twilio_post, len(before_restart)) == before_restart
    app = make_app(daily_limit=1)  # the operator restarts with a smaller DAILY_LIMIT
    assert limit_answers(app, twilio_post, len(after_restart)) == after_restart


def test_daily_limit_resets_next_day(make_app, personas, twilio_post):
    import datetime as dt

    app = make_app(daily_limit=1)
    twilio_post("hey how are you", target=app)
    with app.extensions["phischer"].db.write() as session:
        c = session.scalar(sa.select(Contact))
        c.reply_day = c.reply_day - dt.timedelta(days=1)
    assert twilio_post("good night", target=app).replies == ["Sleep well, dear. Dream of engines."]


def test_reserved_keywords_refused(database, tmp_path):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"messages": []}\n')
    for word in sorted(RESERVED_WORDS):
        with pytest.raises(PersonaError, match="collides"), database.write() as session:
            add_persona(session, PersonaSpec(name=word, keyword=word, dataset=str(dataset)))


@pytest.mark.parametrize(
    ("keyword", "command"),
    [("list", "#list"), ("who", "#who"), ("reset", "#reset"), ("stop", "STOP"), ("info", "INFO")],
)
def test_reserved_keyword_error_names_the_command_as_texted(database, keyword, command):
    # "#list" is a command and "LIST" is not; "STOP" is one and "#stop" is not.
    with pytest.raises(PersonaError) as refused, database.write() as session:
        add_persona(session, PersonaSpec(name="X", keyword=keyword.upper(), dataset="unused"))
    assert str(refused.value) == (
        f"keyword {keyword!r} collides with the SMS command {command}: choose another"
    )


def test_default_persona_setting(make_app, personas, twilio_post):
    app = make_app(default_persona="bo")
    assert twilio_post("#who", target=app).replies == ["You're texting Bo (#bo)."]


def test_unknown_default_persona_is_a_startup_warning_and_the_usual_default(
    make_app, personas, twilio_post, caplog
):
    with caplog.at_level("WARNING", logger="phischer"):
        app = make_app(default_persona="nobody")
    assert [r.getMessage() for r in caplog.records if "DEFAULT_PERSONA" in r.getMessage()] == [
        "DEFAULT_PERSONA='nobody' matches no persona name or keyword: numbers that never chose "
        "one get Ada"
    ]
    assert twilio_post("#who", target=app).replies == ["You're texting Ada (#ada)."]
    caplog.clear()
    with caplog.at_level("WARNING", logger="phischer"):
        make_app(default_persona="BO")  # a keyword in any case is known: no warning
    assert not [r for r in caplog.records if "DEFAULT_PERSONA" in r.getMessage()]


def test_no_persona_yet(make_app, database, twilio_post):
    app = make_app()
    r = twilio_post("hello", target=app)
    assert r.status_code == 200
    assert r.replies == ["No clone is set up yet. Add one with `phischer persona add`."]
    assert twilio_post("#list", target=app).replies == [r.replies[0]]


def test_persona_changes_are_seen_within_the_cache_ttl(app, twilio_post, database, tmp_path):
    from tests.conftest import write_dataset

    directory = app.extensions["phischer"].sms.personas
    assert twilio_post("#list").replies == ["Personas: #ada, #bo"]
    with database.write() as session:
        add_persona(
            session,
            PersonaSpec(
                name="Cy",
                keyword="cy",
                dataset=str(write_dataset(tmp_path / "c.jsonl", [("hi", "hey")])),
            ),
        )
    assert directory.ttl_s == 1.0
    directory.invalidate()  # what the passing of ttl_s does
    assert twilio_post("#list").replies == ["Personas: #ada, #bo, #cy"]


def test_missing_dataset_gets_fallback_and_recorded_error(app, twilio_post, personas):
    personas["ada"].unlink()
    app.extensions["phischer"].sms.backends._made.clear()  # a fresh process
    r = twilio_post("hello")
    assert r.replies == ["Sorry, I can't answer right now. Try again in a bit."]
    inbound = messages(app)[0]
    assert inbound.status == "failed" and "is missing" in inbound.error


def test_default_persona_rule():
    from phischer.models import Persona
    from phischer.personas import pick_default

    ada = Persona(id=1, name="Ada", keyword="ada", is_default=False)
    bo = Persona(id=2, name="Bo", keyword="bo", is_default=True)
    cy = Persona(id=3, name="Cy", keyword="cy", is_default=False)
    assert pick_default([ada, bo, cy], "Cy") is cy  # DEFAULT_PERSONA by name
    assert pick_default([ada, bo, cy], "CY") is cy  # ... or by keyword, any case
    assert pick_default([ada, bo, cy], "nobody") is bo  # unknown: the one marked default
    assert pick_default([ada, bo, cy], None) is bo
    bo.is_default = False
    assert pick_default([ada, bo, cy], None) is ada  # none marked: the oldest
    assert pick_default([], "Ada") is None


# A zero-width space is not blank to str.strip, and an SMS shows nothing of it: such a
# greeting left the switch unanswered, as if the keyword had gone unread.
@pytest.mark.parametrize("greeting", ["  \n ", "\u200b"])
def test_a_blank_greeting_is_no_greeting(greeting, make_app, personas, database, twilio_post):
    with database.write() as session:
        add_persona(
            session,
            PersonaSpec(name="Cy", keyword="cy", dataset=str(personas["bo"]), greeting=greeting),
        )
    app = make_app()
    assert twilio_post("#cy", target=app).replies == ["You're now texting Cy."]


NO_REPLY = "X-Phischer-No-Reply"


def test_a_text_without_a_reply_says_why_in_a_header_twilio_ignores(
    make_app, personas, twilio_post
):
    # `phischer text` sees only the webhook's answer: the header tells it why it holds no
    # message; the TwiML stays the empty <Response/> Twilio expects.
    app = make_app(allowed_numbers=frozenset({"+15550100", "+15550101"}), daily_limit=1)
    answered = twilio_post("good night", target=app)
    assert answered.replies and NO_REPLY not in answered.headers
    sids = iter(range(100))

    def twice(body: str, from_: str = "+15550100", **extra: str) -> list:
        """The answer to a text and to Twilio's retry of it (the same MessageSid)."""
        sid = f"SMwhy{next(sids)}"
        return [twilio_post(body, from_, sid=sid, target=app, **extra) for _ in range(2)]

    said = {
        "not-allowed": twice("hi", "+15550111"),
        "empty": twice("   "),
        "opt-out": twice("STOP"),
        "opted-out": twice("hello?"),
        "twilio-answered": twice("AIDE", "+15550101", OptOutType="HELP"),
    }
    twilio_post("one", "+15550101", target=app)
    twilio_post("two", "+15550101", target=app)  # the one over-the-limit notice
    said["daily-limit"] = twice("three", "+15550101")
    for reason, answers in said.items():
        for r in answers:  # a retry has no reply for the same reason, not just "retry"
            assert (r.status_code, r.mimetype, r.headers.get(NO_REPLY)) == (
                200,
                "text/xml",
                reason,
            )
            assert r.data == b'<?xml version="1.0" encoding="UTF-8"?><Response />'
