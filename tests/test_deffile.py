"""Tests for hpcstack.deffile: parsing as Apptainer does, validation, canonical rendering."""

from __future__ import annotations

import string
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcstack.deffile import (
    DefFileError,
    Definition,
    FilesSection,
    FileTransfer,
    Script,
    Stage,
    check,
    parse,
    render,
    validate,
)
from hpcstack.deffile.parser import diagnose, stored_text
from hpcstack.errors import UserError


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str, filename: str = "t.def") -> list[str]:
    return [str(problem) for problem in check(text, filename)]


def first_problem(text: str) -> str:
    with pytest.raises(DefFileError) as info:
        parse(text, "t.def")
    return str(info.value)


HELLO = dedent(
    """
    # Build hello in one stage, copy it into a small one.
    Bootstrap: docker
    From: docker.io/library/gcc:13   # the compiler image
    Stage: build

    %files
        hello.c /src/hello.c
    %post -c /bin/bash
        # comments in scripts are shell, and kept
        gcc -o /hello /src/hello.c

    Bootstrap: docker
    From: debian:bookworm-slim

    %files from build
        /hello /usr/local/bin/hello
    %environment
        export LC_ALL=C
    %runscript
        exec hello "$@"
    %labels
        Author hpc@example.org
        Version 1.0
    %help
        Prints a greeting.
    """
)


# -- header --------------------------------------------------------------------


def test_minimal_docker_definition() -> None:
    definition = parse("Bootstrap: docker\nFrom: alpine:3.19\n")
    stage = definition.final
    assert stage.header == (("Bootstrap", "docker"), ("From", "alpine:3.19"))
    assert stage.bootstrap == "docker"
    assert stage.from_ == "alpine:3.19"
    assert stage.line == 1
    assert stage.post is None and stage.files == () and stage.labels == ()


def test_header_keys_are_case_insensitive_and_canonical() -> None:
    text = "bootstrap: DEBOOTSTRAP\nosversion: jammy\nMIRRORURL: http://m/ubuntu\ninclude: a\n"
    stage = parse(text).final
    assert [key for key, _ in stage.header] == ["Bootstrap", "OSVersion", "MirrorURL", "Include"]
    assert stage.bootstrap == "debootstrap"
    assert stage.get("mirrorurl") == stage.get("MirrorURL") == "http://m/ubuntu"
    assert stage.get("UpdateURL") is None


@pytest.mark.parametrize(
    "key",
    ["Registry", "Namespace", "Fingerprints", "UpdateURL", "Product", "User", "ConfURL", "SetOpt"],
)
def test_other_known_header_keys(key: str) -> None:
    stage = parse(f"Bootstrap: yum\n{key.upper()}: x\n").final
    assert stage.header[1] == (key, "x")


def test_numbered_other_url_keys() -> None:
    stage = parse("Bootstrap: zypper\notherurl0: http://a\nOtherURL12: http://b\n").final
    assert stage.header[1:] == (("OtherURL0", "http://a"), ("OtherURL12", "http://b"))


def test_value_is_split_on_first_colon_and_stripped() -> None:
    stage = parse("Bootstrap:docker\nFrom:   docker://ubuntu:22.04  \n").final
    assert stage.from_ == "docker://ubuntu:22.04"


def test_header_comments_and_blank_lines() -> None:
    text = "\n# leading comment\n\nBootstrap: docker  # agent\n  # indented comment\n\nFrom: a\n"
    stage = parse(text).final
    assert stage.header == (("Bootstrap", "docker"), ("From", "a"))
    assert stage.line == 4
    assert stage.header_lines == (4, 7)
    assert stage.line_of("from") == 7


def test_header_line_continuation() -> None:
    text = "Bootstrap: debootstrap\nOSVersion: jammy\nInclude: gcc \\\n   make\n"
    assert parse(text).final.include == ["gcc", "make"]


def test_header_continuation_newline_escape() -> None:
    """Issue 12 point 9: as in Apptainer, ``\\n`` before the final ``\\`` is a newline,
    and the next line goes on with its blanks stripped; render writes it back so."""
    text = ("Bootstrap: zypper\nProductPGP: -----BEGIN KEY-----\\n\\\n"
            "   line one\\n\\\n  \\n\\\n   -----END KEY-----\n")
    stage = parse(text).final
    assert stage.get("ProductPGP") == "-----BEGIN KEY-----\nline one\n\n-----END KEY-----"
    assert parse(render(parse(text))) == parse(text)


def test_no_header_renders_and_parses_back() -> None:
    """A file of sections only (Apptainer builds it on the host's choice of bootstrap)."""
    defn, found = diagnose("%post\n  true\n%labels\n  A b\n", "n.def")
    assert [str(p) for p in found] == ["n.def:1: missing Bootstrap header"]
    assert diagnose(render(defn))[0] == defn


def test_dangling_continuation_is_an_error() -> None:
    text = "Bootstrap: debootstrap\nOSVersion: jammy\nInclude: gcc \\\n\n%post\n"
    assert problems(text) == ["t.def:3: line continuation '\\' without a following line"]


def test_include_splits_on_blanks_and_commas() -> None:
    stage = parse("Bootstrap: debootstrap\nOSVersion: jammy\nInclude: a, b c,d\n").final
    assert stage.include == ["a", "b", "c", "d"]


def test_unknown_header_key() -> None:
    text = "Bootstrap: docker\nFrom: a\nFlavour: vanilla\n"
    assert first_problem(text) == "t.def:3: unknown header key Flavour"


def test_header_line_without_colon() -> None:
    text = "Bootstrap: docker\nFrom: a\njust some text\n"
    assert problems(text) == ["t.def:3: expected 'Key: value' in header, got 'just some text'"]


def test_duplicate_header_key() -> None:
    text = "Bootstrap: docker\nFrom: a\nfrom: b\n"
    assert problems(text) == ["t.def:3: duplicate header key From (first on line 2)"]


def test_bootstrap_moves_first_when_not_at_column_zero() -> None:
    stage = parse("From: alpine\n  Bootstrap: docker\n").final
    assert stage.header == (("Bootstrap", "docker"), ("From", "alpine"))
    assert stage.line == 2
    assert stage.header_lines == (2, 1)


# -- validation of the header ----------------------------------------------------


def test_missing_bootstrap() -> None:
    assert problems("From: alpine\n\n%post\n  true\n") == ["t.def:1: missing Bootstrap header"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "  \r\n"])
def test_empty_definition(text: str) -> None:
    assert problems(text) == ["t.def:0: empty definition file (no Bootstrap header)"]


def test_text_before_first_bootstrap() -> None:
    text = "%post\n  echo orphan\nBootstrap: docker\nFrom: a\n"
    assert problems(text) == ["t.def:1: text before the first Bootstrap header"]


def test_unknown_bootstrap_agent() -> None:
    assert problems("# c\nBootstrap: dockr\n") == ["t.def:2: unknown bootstrap agent dockr"]


def test_empty_bootstrap() -> None:
    assert problems("Bootstrap:\n") == ["t.def:1: empty Bootstrap header"]


@pytest.mark.parametrize(
    "agent",
    [
        "docker",
        "localimage",
        "library",
        "shub",
        "oras",
        "oci",
        "oci-archive",
        "docker-daemon",
        "docker-archive",
    ],
)
def test_agents_that_need_from(agent: str) -> None:
    text = f"\nBootstrap: {agent.upper()}\n"
    assert problems(text) == [f"t.def:2: missing From header (required by bootstrap agent {agent})"]
    assert check(text + "From: x\n") == []


def test_empty_from() -> None:
    assert problems("Bootstrap: docker\nFrom:\n") == ["t.def:2: empty From header"]


def test_debootstrap_needs_osversion_but_not_mirrorurl() -> None:
    assert problems("Bootstrap: debootstrap\n") == [
        "t.def:1: missing OSVersion header (required by bootstrap agent debootstrap)"
    ]
    assert check("Bootstrap: debootstrap\nOSVersion: bookworm\n") == []


@pytest.mark.parametrize("agent", ["scratch", "yum", "zypper", "busybox", "arch"])
def test_agents_without_required_keys(agent: str) -> None:
    assert parse(f"Bootstrap: {agent}\n").final.bootstrap == agent


# -- script sections -------------------------------------------------------------


def test_script_body_keeps_comments_and_indentation() -> None:
    text = dedent(
        """
        Bootstrap: scratch
        %post
            # a shell comment
            echo "a # not a comment either"


        %runscript
        exec "$@"
        """
    )
    stage = parse(text).final
    assert stage.post == Script('    # a shell comment\n    echo "a # not a comment either"')
    assert stage.post.line == 2
    assert stage.runscript == Script('exec "$@"')
    assert stage.runscript.line == 7


def test_leading_blank_lines_of_a_body_are_dropped() -> None:
    stage = parse("Bootstrap: scratch\n%test\n\n\n  true\n\n").final
    assert stage.test == Script("  true")


def test_empty_section_is_present_with_empty_body() -> None:
    stage = parse("Bootstrap: scratch\n%startscript\n%help\n").final
    assert stage.startscript == Script("")
    assert stage.help == Script("")
    assert stage.setup is None


def test_section_arguments_and_interpreter() -> None:
    text = "Bootstrap: scratch\n%post -c /bin/bash\n  set -o pipefail\n%runscript\t-c  /bin/zsh\n"
    stage = parse(text).final
    assert stage.post.args == "-c /bin/bash"
    assert stage.post.interpreter == "/bin/bash"
    assert stage.runscript.args == "-c  /bin/zsh"
    assert stage.runscript.interpreter == "/bin/zsh"
    assert Script("x").interpreter is None
    assert Script("x", "-e").interpreter is None
    assert Script("x", "-c /bin/bash -l # why").params == ["-c", "/bin/bash", "-l"]


def test_argv_follows_apptainer() -> None:
    assert Script("x").argv("/s") == ("/bin/sh", "-ex", "/s")
    assert Script("x", "-u").argv("/s") == ("/bin/sh", "-ex", "-u", "/s")
    assert Script("x", "-c /bin/bash -l # bash").argv("/s") == (
        "/bin/sh",
        "-ex",
        "-c",
        "/bin/bash -l /s",
    )


def test_dash_c_without_command() -> None:
    assert problems("Bootstrap: scratch\n%post -c\n  true\n") == [
        "t.def:2: %post argument -c needs a command after it"
    ]


def test_section_names_are_case_insensitive() -> None:
    stage = parse("Bootstrap: scratch\n%POST\n  true\n%Environment\n  export A=1\n").final
    assert stage.post == Script("  true")
    assert stage.environment == Script("  export A=1")


def test_duplicate_script_sections_are_appended() -> None:
    text = "Bootstrap: scratch\n%post -c /bin/bash\n  one\n\n%runscript\n  r\n%post\n  two\n"
    post = parse(text).final.post
    assert post == Script("  one\n  two", "-c /bin/bash")
    assert post.line == 2


def test_duplicate_script_sections_with_conflicting_arguments() -> None:
    text = "Bootstrap: scratch\n%post -c /bin/bash\n  one\n%post -c /bin/zsh\n  two\n"
    assert problems(text) == [
        "t.def:4: %post arguments '-c /bin/zsh' differ from '-c /bin/bash' on line 2"
    ]


def test_indented_percent_line_opens_a_section_as_in_apptainer() -> None:
    text = "Bootstrap: scratch\n%post\n  printf 'x'\n  %s\n"
    assert problems(text) == ["t.def:4: unknown section %s"]


# -- sections Apptainer knows that we refuse -------------------------------------


def test_unknown_section() -> None:
    text = "Bootstrap: scratch\n\n%foo bar\n  x\n%post\n  true\n"
    assert problems(text) == ["t.def:3: unknown section %foo"]


@pytest.mark.parametrize(
    "name",
    [
        "appinstall",
        "apprun",
        "applabels",
        "appfiles",
        "appenv",
        "apphelp",
        "appsetup",
        "apptest",
        "appstart",
    ],
)
def test_scif_app_sections_are_refused(name: str) -> None:
    text = f"Bootstrap: scratch\n%{name} foo\n  x\n"
    assert problems(text) == [f"t.def:2: SCIF app sections (%{name}) are not supported"]


def test_pre_and_arguments_sections_are_refused() -> None:
    text = "Bootstrap: scratch\n%pre\n  x\n%arguments\n  v=1\n"
    assert problems(text) == [
        "t.def:2: %pre section is not supported (use %setup)",
        "t.def:4: %arguments section (build arguments) is not supported",
    ]


# -- %files ----------------------------------------------------------------------


def test_files_lines() -> None:
    text = dedent(
        """
        Bootstrap: scratch
        %files
            # a comment line

            single
            src /dst
            "with space" '/in container/x'
            "a'b" 'c"d'   # trailing comment
            'x'y   z
        """
    )
    assert problems(text) == ["t.def:9: bad %files line: text right after a closing quote"]
    stage = parse(text.replace("'x'y   z", "")).final
    (section,) = stage.files
    assert section.stage is None
    assert section.line == 2
    assert section.transfers == (
        FileTransfer("single", "single"),
        FileTransfer("src", "/dst"),
        FileTransfer("with space", "/in container/x"),
        FileTransfer("a'b", 'c"d'),
    )
    assert [t.line for t in section.transfers] == [5, 6, 7, 8]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a b c", "too many paths in %files line (expected SRC [DST])"),
        ('"a b', 'bad %files line: unterminated " quote'),
        ("'a", "bad %files line: unterminated ' quote"),
        ('"" /x', "empty path in %files line"),
    ],
)
def test_bad_files_lines(line: str, message: str) -> None:
    assert problems(f"Bootstrap: scratch\n%files\n  ok\n  {line}\n") == [f"t.def:4: {message}"]


def test_files_sections_merge_by_source_stage() -> None:
    text = dedent(
        """
        Bootstrap: scratch
        Stage: one

        Bootstrap: scratch
        %files
            a
        %files from one
            /b
        %files
            c
        %files From one # comment
            /d
        """
    )
    files = parse(text).final.files
    assert files == (
        FilesSection(None, (FileTransfer("a", "a"), FileTransfer("c", "c"))),
        FilesSection("one", (FileTransfer("/b", "/b"), FileTransfer("/d", "/d"))),
    )
    assert [section.line for section in files] == [5, 7]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("from", "%files from needs exactly one stage name"),
        ("from a b", "%files from needs exactly one stage name"),
        ("to x", "unexpected %files arguments 'to x'"),
    ],
)
def test_bad_files_arguments(args: str, message: str) -> None:
    assert problems(f"Bootstrap: scratch\n%files {args}\n  x\n") == [f"t.def:2: {message}"]


def test_files_from_must_name_an_earlier_stage() -> None:
    text = dedent(
        """
        Bootstrap: scratch
        Stage: first
        %files from later
            /x
        %files from first
            /y

        Bootstrap: scratch
        Stage: later
        %files from nowhere
            /z
        """
    )
    assert problems(text) == [
        "t.def:3: %files from later: no earlier stage has that name",
        "t.def:5: %files from first: no earlier stage has that name",
        "t.def:10: %files from nowhere: no earlier stage has that name",
    ]


# -- %labels ---------------------------------------------------------------------


def test_labels() -> None:
    """Split at the first space, as Apptainer's parser does: a tab does not split."""
    text = dedent(
        """
        Bootstrap: scratch
        %labels
            # comment
            Author  Jane Doe
            Tab\tseparated value
            Flag
            Author Someone Else
        """
    )
    stage = parse(text).final
    assert stage.labels == (
        ("Author", "Someone Else"),
        ("Tab\tseparated", "value"),
        ("Flag", ""),
    )
    assert stage.label_map["Flag"] == ""
    assert parse(render(parse(text))).final.labels == stage.labels


def test_labels_merge_across_sections() -> None:
    text = "Bootstrap: scratch\n%labels\n  A 1\n%labels\n  B 2\n"
    assert parse(text).final.labels == (("A", "1"), ("B", "2"))


def test_labels_take_no_arguments() -> None:
    assert problems("Bootstrap: scratch\n%labels Author me\n") == [
        "t.def:2: %labels takes no arguments; put KEY VALUE on the next line"
    ]


# -- stages ----------------------------------------------------------------------


def test_multi_stage_example() -> None:
    definition = parse(HELLO, "hello.def")
    build, final = definition.stages
    assert build.name == "build" and final.name is None
    assert definition.final is final
    assert definition.stage("build") is build
    assert (build.line, final.line) == (2, 12)
    assert build.from_ == "docker.io/library/gcc:13"
    assert build.files == (FilesSection(None, (FileTransfer("hello.c", "/src/hello.c"),)),)
    assert build.post.args == "-c /bin/bash"
    assert build.post.line == 8
    assert final.files[0] == FilesSection(
        "build", (FileTransfer("/hello", "/usr/local/bin/hello"),)
    )
    assert final.files[0].line == 15
    assert final.labels == (("Author", "hpc@example.org"), ("Version", "1.0"))
    assert final.help == Script("    Prints a greeting.")
    with pytest.raises(KeyError):
        definition.stage("nope")


def test_bootstrap_at_column_zero_starts_a_stage_even_in_a_script() -> None:
    text = "Bootstrap: scratch\n%post\n  cat > x <<EOF\nbootstrap: docker\nEOF\n"
    definition, errors = diagnose(text, "t.def")
    assert len(definition.stages) == 2
    assert [str(error) for error in errors] == [
        "t.def:4: missing From header (required by bootstrap agent docker)",
        "t.def:5: expected 'Key: value' in header, got EOF",
    ]


def test_duplicate_stage_names() -> None:
    text = "Bootstrap: scratch\nStage: a\n\nBootstrap: scratch\n# x\nstage: a\n"
    assert problems(text) == ["t.def:6: duplicate stage name a (first on line 2)"]


def test_empty_stage_name() -> None:
    assert problems("Bootstrap: scratch\nStage:\n") == ["t.def:2: empty Stage name"]


# -- line endings and errors -----------------------------------------------------


def test_crlf_gives_the_same_model_and_lines() -> None:
    crlf = HELLO.replace("\n", "\r\n")
    assert parse(crlf) == parse(HELLO)
    assert parse(crlf).stages[1].files[0].line == 15
    assert "\r" not in render(parse(crlf))


def test_byte_order_mark_is_ignored() -> None:
    assert parse("\ufeffBootstrap: scratch\n").final.bootstrap == "scratch"


def test_check_reports_everything_in_line_order_and_parse_the_first() -> None:
    text = "Bootstrap: dockr\nColour: red\n%appinstall x\n%foo\n%files from nope\n a b c\n"
    assert problems(text, "x.def") == [
        "x.def:1: unknown bootstrap agent dockr",
        "x.def:2: unknown header key Colour",
        "x.def:3: SCIF app sections (%appinstall) are not supported",
        "x.def:4: unknown section %foo",
        "x.def:5: %files from nope: no earlier stage has that name",
        "x.def:6: too many paths in %files line (expected SRC [DST])",
    ]
    with pytest.raises(DefFileError) as info:
        parse(text, "x.def")
    assert (info.value.filename, info.value.line) == ("x.def", 1)
    assert info.value.message == "unknown bootstrap agent dockr"


def test_def_file_error_is_a_one_line_user_error() -> None:
    error = DefFileError("a.def", 3, "bad\nthing")
    assert isinstance(error, UserError)
    assert str(error) == "a.def:3: bad thing"
    assert check("Bootstrap: scratch\n%post\n  x\n") == []


def test_odd_text_is_quoted_in_messages() -> None:
    assert problems("Bootstrap: scratch\nBad\u00a0Key: 1\n") == [
        "t.def:2: unknown header key 'Bad\\xa0Key'"
    ]


# -- render ----------------------------------------------------------------------


def test_render_is_canonical() -> None:
    assert render(parse(HELLO)) == dedent(
        """
        Bootstrap: docker
        From: docker.io/library/gcc:13
        Stage: build

        %files
            hello.c /src/hello.c

        %post -c /bin/bash
            # comments in scripts are shell, and kept
            gcc -o /hello /src/hello.c

        Bootstrap: docker
        From: debian:bookworm-slim

        %files from build
            /hello /usr/local/bin/hello

        %environment
            export LC_ALL=C

        %runscript
            exec hello "$@"

        %labels
            Author hpc@example.org
            Version 1.0

        %help
            Prints a greeting.
        """
    )


def test_render_quotes_paths_that_need_it() -> None:
    stage = Stage(
        header=[("Bootstrap", "scratch")],
        files=[
            FilesSection(
                None,
                [
                    FileTransfer("a b", "a b"),
                    FileTransfer('say "hi" now', "#x"),
                    FileTransfer("%p", "'q"),
                ],
            )
        ],
    )
    text = render(Definition([stage]))
    assert text.splitlines()[3:] == [
        '    "a b"',
        '    \'say "hi" now\' "#x"',
        '    "%p" "\'q"',
    ]
    assert parse(text) == Definition((stage,))


def test_model_accepts_lists_and_stays_hashable() -> None:
    stage = Stage(header=[["Bootstrap", "scratch"]], labels=[("a", "b")])
    assert stage.header == (("Bootstrap", "scratch"),)
    assert hash(Definition([stage])) == hash(Definition((stage,)))


def test_line_numbers_do_not_take_part_in_equality() -> None:
    assert Script("x", line=3) == Script("x", line=9)
    assert FileTransfer("a", "a", line=1) == FileTransfer("a", "a")


def test_stage_helpers() -> None:
    stage = parse(HELLO).stages[0]
    assert stage.script("%post") is stage.post
    with pytest.raises(KeyError):
        stage.script("labels")
    assert stage.line_of("Stage") == 4
    assert stage.line_of("Include") == stage.line


@pytest.mark.parametrize(
    "stage",
    [
        Stage(header=[("From", "x"), ("Bootstrap", "docker")]),
        Stage(header=[("Bootstrap", "docker"), ("from", "x")]),
        Stage(header=[("Bootstrap", "docker"), ("From", "a # b")]),
        Stage(header=[("Bootstrap", "scratch")], post=Script("ok\n  %oops")),
        Stage(header=[("Bootstrap", "scratch")], post=Script("ok\nbootstrap: x")),
        Stage(header=[("Bootstrap", "scratch")], post=Script("\nleading blank")),
        Stage(header=[("Bootstrap", "scratch")], labels=[("two words", "v")]),
        Stage(
            header=[("Bootstrap", "scratch")], files=[FilesSection(None, [FileTransfer("", "")])]
        ),
        Stage(
            header=[("Bootstrap", "scratch")],
            files=[FilesSection(None, [FileTransfer("\"a b'", "x")])],
        ),
        Stage(header=[("Bootstrap", "scratch")], files=[FilesSection(None), FilesSection(None)]),
    ],
)
def test_render_refuses_what_the_syntax_cannot_express(stage: Stage) -> None:
    with pytest.raises(ValueError, match="cannot render stage 1"):
        render(Definition([stage]))


def test_validate_checks_models_built_in_code() -> None:
    stage = Stage(header=[("Bootstrap", "docker")], line=7)
    assert [str(e) for e in validate(Definition([stage]), "gen")] == [
        "gen:7: missing From header (required by bootstrap agent docker)"
    ]


# -- property tests --------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# No control characters (nor line separators): the parser refuses them, tab aside.
NO_CONTROLS = ["Cs", "Cc", "Zl", "Zp"]
NO_NEWLINE = st.characters(blacklist_categories=NO_CONTROLS)
WORD = st.text(string.ascii_letters + string.digits + "._-/:+@", min_size=1, max_size=12)


def _is_blank(line: str) -> bool:
    return not line.strip()


def _body_line_ok(line: str) -> bool:
    return not (
        line.lstrip().startswith("%") or line[:10].lower() == "bootstrap:" or line.endswith("\r")
    )


body_lines = st.lists(
    st.one_of(
        st.sampled_from(
            ["echo hi", "  # comment", "\tapt-get install -y gcc", "", "   ", "printf '%s' x"]
        ),
        st.text(NO_NEWLINE, max_size=20),
    ).filter(_body_line_ok),
    max_size=6,
)


@st.composite
def bodies(draw: st.DrawFn) -> str:
    lines = draw(body_lines)
    while lines and _is_blank(lines[0]):
        lines.pop(0)
    while lines and _is_blank(lines[-1]):
        lines.pop()
    return "\n".join(lines)


def _args_ok(args: str) -> bool:
    script = Script("", args)
    return "-c" not in script.params or script.interpreter is not None


section_args = st.one_of(
    st.sampled_from(["", "-c /bin/bash", "-e", "-c /bin/zsh -l # zsh"]),
    st.text(NO_NEWLINE, max_size=15).map(str.strip).filter(_args_ok),
)
scripts = st.builds(Script, bodies(), section_args)
header_values = (
    st.text(st.characters(blacklist_characters="#", blacklist_categories=NO_CONTROLS),
            max_size=20)
    .map(str.strip)
    .filter(lambda value: not value.endswith("\\"))
)
label_keys = st.text(NO_NEWLINE, min_size=1, max_size=10).filter(
    lambda key: not any(c.isspace() for c in key) and key[0] not in "#%"
)
label_values = st.text(NO_NEWLINE, max_size=15).map(str.strip)


def _path_ok(path: str) -> bool:
    quoted = any(c.isspace() for c in path) or path[0] in "\"'#%"
    return not quoted or '"' not in path or "'" not in path


paths = st.one_of(WORD, st.text(NO_NEWLINE, min_size=1, max_size=12).filter(_path_ok))
transfers = st.builds(
    lambda src, dst: FileTransfer(src, dst if dst is not None else src),
    paths,
    st.none() | paths,
)
EXTRA_KEYS = ["MirrorURL", "UpdateURL", "Include", "Registry", "Namespace", "SetOpt", "OtherURL3"]


@st.composite
def stages(draw: st.DrawFn, earlier: list[str], name: str | None) -> Stage:
    agent = draw(st.sampled_from(sorted(["docker", "debootstrap", "scratch", "oras", "yum"])))
    header = [("Bootstrap", draw(st.sampled_from([agent, agent.upper(), agent.title()])))]
    if agent in ("docker", "oras"):
        header.append(("From", draw(header_values.filter(bool))))
    if agent == "debootstrap":
        header.append(("OSVersion", draw(header_values.filter(bool))))
    if name is not None:
        header.append(("Stage", name))
    for key in draw(st.lists(st.sampled_from(EXTRA_KEYS), unique=True, max_size=3)):
        header.append((key, draw(header_values)))
    sources = draw(st.lists(st.sampled_from([None, *earlier]), unique=True, max_size=2))
    files = [
        FilesSection(source, tuple(draw(st.lists(transfers, max_size=3)))) for source in sources
    ]
    chosen = {
        section: draw(st.none() | scripts)
        for section in ("setup", "post", "test", "environment", "runscript", "startscript", "help")
    }
    labels = draw(st.dictionaries(label_keys, label_values, max_size=3))
    return Stage(header=header, files=files, labels=tuple(labels.items()), **chosen)


@st.composite
def definitions(draw: st.DrawFn) -> Definition:
    count = draw(st.integers(1, 3))
    names = draw(st.lists(WORD.filter(lambda w: "#" not in w), unique=True, min_size=count))
    result: list[Stage] = []
    for index in range(count):
        name = names[index] if draw(st.booleans()) else None
        earlier = [stage.name for stage in result if stage.name]
        result.append(draw(stages(earlier, name)))
    return Definition(tuple(result))


@FAST
@given(definitions())
def test_render_then_parse_round_trips(definition: Definition) -> None:
    text = render(definition)
    assert check(text) == []
    assert parse(text) == definition
    assert render(parse(text)) == text


FRAGMENTS = [
    "Bootstrap: docker",
    "bootstrap:",
    "From: x",
    "OSVersion: jammy",
    "Stage: a",
    "Stage: b",
    "Include: a \\",
    "%post",
    "%post -c",
    "%files",
    "%files from a",
    "%files from",
    "%labels",
    "%appinstall x",
    "%foo",
    "%runscript -c /bin/bash",
    "  src dst",
    '  "a b',
    "  'x' y",
    "  K V",
    "#",
    "# comment",
    "\r",
    "\r\n",
    "\n",
    "\n\n",
    " ",
    ":",
    "\\",
    '"',
    "\ufeff",
]
fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=25
).map("".join)


def _assert_consistent(text: str) -> None:
    found = check(text, "f.def")
    assert all(isinstance(problem, DefFileError) for problem in found)
    line_count = text.count("\n") + 1
    assert all(0 <= problem.line <= line_count for problem in found)
    assert [p.line for p in found] == sorted(p.line for p in found)
    assert all("\n" not in str(problem) for problem in found)
    try:
        definition = parse(text, "f.def")
    except DefFileError as error:
        assert found and str(error) == str(found[0])
    else:
        assert found == []
        assert parse(render(definition)) == definition


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_only_raises_def_file_errors(text: str) -> None:
    _assert_consistent(text)


@settings(max_examples=400, deadline=None)
@given(fragment_text)
def test_plausible_fragments_only_raise_def_file_errors(text: str) -> None:
    _assert_consistent(text)


def test_stored_text_drops_only_a_comment_preamble() -> None:
    """What goes into the image, as Apptainer stores it: from the first Bootstrap line when
    only comments and blank lines come before it; anything else is kept whole."""
    assert stored_text("# about\n\n  # more\nBootstrap: scratch\n%post\n") == (
        "Bootstrap: scratch\n%post\n")
    assert stored_text("%post\n  true\nBootstrap: scratch\n") == (
        "%post\n  true\nBootstrap: scratch\n")
    assert stored_text("# only a comment\n") == "# only a comment\n"
