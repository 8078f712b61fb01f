"""Spool, dot-lock, temp-drop and cache locations for every path option (reference S1-S8,
S10, §7.1, §7.4), and user names that must never reach the filesystem."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qpopper import limits
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.paths import SpoolPaths, check_user_name, hash_dirs
from tests.helpers.sysusers import in_child
from tests.helpers.repo import REPO


def cfg_for(spool_dir, **changes):
    return Config.defaults().replace(spool_dir=str(spool_dir), **changes)


def test_defaults_put_everything_in_the_spool_dir(tmp_path):
    p = SpoolPaths.for_user(cfg_for(tmp_path), "alice", "/home/alice")
    assert p.spool == f"{tmp_path}/alice"
    assert p.lock == f"{tmp_path}/alice.lock"
    assert p.temp_drop == f"{tmp_path}/.alice.pop"
    assert p.cache == f"{tmp_path}/.alice.cache"
    assert p.options_file == f"{tmp_path}/alice.qpopper-options"
    assert p.journal == f"{tmp_path}/.alice.pop.journal"
    assert p.new_image == f"{tmp_path}/.alice.pop.new"
    assert p.old_temp_drop is None
    assert p.hashed_dirs == ()


@pytest.mark.parametrize("user, expected", [
    ("maida", "o"),            # the manual's example (five characters: decision §7.1)
    ("maidaxyz", "o"),         # only the first five count
    ("ab", chr(ord("a") + (97 + 98) % 26)),
    ("z", chr(ord("a") + 122 % 26)),
])
def test_hash_spool_1_sums_the_first_five_characters(tmp_path, user, expected):
    assert hash_dirs(user, 1) == (expected,)
    p = SpoolPaths.for_user(cfg_for(tmp_path, hash_spool=1), user, None)
    assert p.spool == f"{tmp_path}/{expected}/{user}"
    assert p.lock == f"{tmp_path}/{expected}/{user}.lock"
    assert p.temp_drop == f"{tmp_path}/{expected}/.{user}.pop"
    assert p.cache == f"{tmp_path}/{expected}/.{user}.cache"


def test_hash_spool_1_with_four_characters_would_give_v():
    # The manual's "first four" is wrong: four characters of maida give v, not its own o.
    assert chr(ord("a") + sum(b"maid") % 26) == "v"
    assert hash_dirs("maida", 1) == ("o",)


@pytest.mark.parametrize("user, dirs", [("maida", ("m", "a")), ("x", ("x", "x")),
                                        ("b2", ("b", "2"))])
def test_hash_spool_2_uses_first_and_second_letter(tmp_path, user, dirs):
    p = SpoolPaths.for_user(cfg_for(tmp_path, hash_spool=2), user, None)
    assert p.spool == os.path.join(str(tmp_path), *dirs, user)
    assert p.temp_drop == os.path.join(str(tmp_path), *dirs, f".{user}.pop")
    assert p.hashed_dirs == (f"{tmp_path}/{dirs[0]}", os.path.join(str(tmp_path), *dirs))


def test_temp_dir_and_temp_name(tmp_path):
    tdir = tmp_path / "drops"
    p = SpoolPaths.for_user(cfg_for(tmp_path, temp_dir=str(tdir), temp_name="pop-%s.drop"),
                            "alice", None)
    assert p.temp_drop == f"{tdir}/pop-alice.drop"
    assert p.cache == f"{tdir}/.alice.cache"        # cache-dir unset: beside the temp drop
    assert p.spool == f"{tmp_path}/alice"


def test_temp_dir_is_hashed_too(tmp_path):
    tdir = tmp_path / "drops"
    p = SpoolPaths.for_user(cfg_for(tmp_path, temp_dir=str(tdir), hash_spool=1), "maida", None)
    assert p.temp_drop == f"{tdir}/o/.maida.pop"
    assert f"{tdir}/o" in p.hashed_dirs and f"{tmp_path}/o" in p.hashed_dirs


def test_cache_dir_and_cache_name(tmp_path):
    cdir = tmp_path / "cache"
    p = SpoolPaths.for_user(cfg_for(tmp_path, cache_dir=str(cdir), cache_name="%s.idx"),
                            "alice", None)
    assert p.cache == f"{cdir}/alice.idx"
    assert p.temp_drop == f"{tmp_path}/.alice.pop"


@pytest.mark.parametrize("option", ["temp_name", "cache_name"])
@pytest.mark.parametrize("bad", ["fixed.pop", "sub/%s.pop"])
def test_name_templates_must_name_one_file_per_user(tmp_path, option, bad):
    with pytest.raises(PopError) as info:
        SpoolPaths.for_user(cfg_for(tmp_path, **{option: bad}), "alice", None)
    assert info.value.code is RespCode.SYS_PERM
    assert "/" not in info.value.text


def test_home_dir_mail(tmp_path):
    p = SpoolPaths.for_user(cfg_for(tmp_path, home_dir_mail=".mail"), "alice", "/home/alice")
    assert p.spool == "/home/alice/.mail"
    assert p.lock == "/home/alice/.mail.lock"
    assert p.temp_drop == f"{tmp_path}/.alice.pop"      # home-dir-mail moves only the spool
    assert p.old_temp_drop is None                      # ... so the plain location is the same


def test_home_dir_mail_with_hashing_checks_the_old_location(tmp_path):
    p = SpoolPaths.for_user(cfg_for(tmp_path, home_dir_mail=".mail", hash_spool=1), "maida",
                            "/home/maida")
    assert p.temp_drop == f"{tmp_path}/o/.maida.pop"
    assert p.old_temp_drop == f"{tmp_path}/.maida.pop"


def test_home_dir_misc(tmp_path):
    p = SpoolPaths.for_user(cfg_for(tmp_path, home_dir_misc=True), "alice", "/home/alice")
    assert p.spool == f"{tmp_path}/alice"
    assert p.temp_drop == "/home/alice/.alice.pop"
    assert p.cache == "/home/alice/.alice.cache"


@pytest.mark.parametrize("option", [{"home_dir_mail": ".mail"}, {"home_dir_misc": True}])
def test_home_options_need_a_home(tmp_path, option):
    with pytest.raises(PopError) as info:
        SpoolPaths.for_user(cfg_for(tmp_path, **option), "alice", "")
    assert info.value.code is RespCode.SYS_PERM


def test_check_old_spool_loc(tmp_path):
    on = SpoolPaths.for_user(cfg_for(tmp_path, hash_spool=2), "maida", None)
    assert on.old_temp_drop == f"{tmp_path}/.maida.pop"
    off = SpoolPaths.for_user(cfg_for(tmp_path, hash_spool=2, check_old_spool_loc=False),
                              "maida", None)
    assert off.old_temp_drop is None


def test_options_file_is_in_the_plain_spool_dir(tmp_path):
    p = SpoolPaths.for_user(cfg_for(tmp_path, hash_spool=1), "maida", None)
    assert p.options_file == f"{tmp_path}/maida.qpopper-options"


def test_check_hash_dir_creates_missing_dirs_with_the_spool_dirs_mode(tmp_path):
    spool_dir = tmp_path / "mail"
    spool_dir.mkdir()
    os.chmod(spool_dir, 0o2775)
    if os.geteuid() == 0:
        os.chown(spool_dir, 4321, 4322)
    p = SpoolPaths.for_user(cfg_for(spool_dir, hash_spool=2), "maida", None)
    assert not (spool_dir / "m").exists()       # for_user alone never writes
    p.ensure_hash_dirs()
    for d in (spool_dir / "m", spool_dir / "m" / "a"):
        st = os.stat(d)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o2775
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (4321, 4322)
    p.ensure_hash_dirs()                         # idempotent


@pytest.mark.parametrize("parent_mode", [0o2775, 0o775, 0o3777])
def test_a_hashed_dir_is_born_searchable_when_born_with_the_spool_dirs_group(
        tmp_path, monkeypatch, parent_mode):
    """Between a new hashed directory's mkdir and its chown/chmod, a session of another user
    hashed to it may already walk through it, as that user: when the directory is born with
    the spool directory's group (a setgid spool directory, as /var/mail is), it is born with
    its permission bits and sticky bit, less the umask; else private (0700) until shaped,
    never more open than the finished directory."""
    from qpopper.spool import dirs
    spool_dir = tmp_path / "mail"
    spool_dir.mkdir()
    other_group = 4322 if os.geteuid() == 0 else os.getegid()
    if os.geteuid() == 0:
        os.chown(spool_dir, 0, other_group)
    os.chmod(spool_dir, parent_mode)
    born = []
    real_shape = dirs._shape_like

    def shape_like(fd, like):
        born.append(os.fstat(fd).st_mode & 0o1777)
        real_shape(fd, like)
    monkeypatch.setattr(dirs, "_shape_like", shape_like)
    umask = os.umask(0o022)
    try:
        SpoolPaths.for_user(cfg_for(spool_dir, hash_spool=2), "maida", None).ensure_hash_dirs()
    finally:
        os.umask(umask)
    born_with_its_group = parent_mode & 0o2000 or other_group == os.getegid()
    # its permission bits and the sticky bit, less the umask; never more than the model's
    assert born == [parent_mode & 0o1777 & ~0o022 if born_with_its_group else 0o700] * 2
    assert stat.S_IMODE(os.stat(spool_dir / "m" / "a").st_mode) == stat.S_IMODE(
        os.stat(spool_dir).st_mode)


def test_ensure_hash_dirs_logs_what_it_cannot_do(tmp_path):
    p = SpoolPaths.for_user(cfg_for(tmp_path / "missing", hash_spool=1), "maida", None)
    lines = []
    p.ensure_hash_dirs(lambda prio, text: lines.append(text))
    assert lines and "check-hash-dir" in lines[0]
    assert not (tmp_path / "missing").exists()


def test_ensure_hash_dirs_never_follows_a_planted_link(tmp_path):
    """Links where hashed directories belong (first or second level): refused with
    [SYS/PERM], the targets untouched, nothing made inside them."""
    spool_dir = tmp_path / "mail"
    spool_dir.mkdir()
    os.chmod(spool_dir, 0o2775)
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (spool_dir / "m").symlink_to(victim)              # maida under hash-spool 2: m/a
    (spool_dir / "b").symlink_to(elsewhere)           # bob: b/o
    for user, link in (("maida", spool_dir / "m"), ("bob", spool_dir / "b")):
        p = SpoolPaths.for_user(cfg_for(spool_dir, hash_spool=2), user, None)
        with pytest.raises(PopError) as info:
            p.ensure_hash_dirs()
        assert info.value.code is RespCode.SYS_PERM
        assert info.value.log.startswith(f"check-hash-dir: {link} not used: ")
        assert str(tmp_path) not in info.value.text
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    assert list(elsewhere.iterdir()) == []


def test_ensure_hash_dirs_logs_a_hashed_dir_it_cannot_create(tmp_path):
    """A temp-dir that does not exist: the spool's hashed dir is still made, the missing
    directory is logged by its path (the maildrop reports the problem at open)."""
    spool_dir = tmp_path / "mail"
    spool_dir.mkdir()
    temp_dir = tmp_path / "no-such-temp"
    p = SpoolPaths.for_user(cfg_for(spool_dir, hash_spool=1, temp_dir=str(temp_dir)),
                            "maida", None)
    lines = []
    p.ensure_hash_dirs(lambda prio, text: lines.append(text))
    assert (spool_dir / "o").is_dir()
    assert lines == [f"check-hash-dir: {temp_dir}: No such file or directory"]


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_ensure_hash_dirs_refuses_to_create_as_a_user_who_does_not_own_the_spool_dir(world_tmp):
    """Security: a hashed directory made by a user would let that user tamper with every
    spool hashed into it. Even where the permissions allow it (mode 0777 here), a process
    that is neither root nor the spool directory's owner only logs; the owner may create."""
    spool_dir = Path(world_tmp) / "mail"
    spool_dir.mkdir()
    os.chmod(spool_dir, 0o777)
    os.chown(spool_dir, 4321, 4322)
    p = SpoolPaths.for_user(cfg_for(spool_dir, hash_spool=2), "maida", None)

    def another_user_then_the_owner() -> str:
        os.setresuid(5555, 5555, 0)
        lines = []
        p.ensure_hash_dirs(lambda prio, text: lines.append(text))
        refused = not (spool_dir / "m").exists() and "may create" in " ".join(lines)
        os.setresuid(0, 0, 0)
        os.setresuid(4321, 4321, 0)
        p.ensure_hash_dirs()
        return f"{refused} {(spool_dir / 'm' / 'a').is_dir()}"

    assert in_child(another_user_then_the_owner) == "True True"
    assert os.stat(spool_dir / "m" / "a").st_uid == 4321


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_ensure_hash_dirs_after_the_drop_only_looks_and_still_refuses_links(world_tmp):
    """As the user (after the drop, nothing is created): directories the user may search but
    not read (0711) pass silently; a planted link is refused as it is for root."""
    spool_dir = Path(world_tmp) / "mail"
    (spool_dir / "m" / "a").mkdir(parents=True)
    for d in (spool_dir, spool_dir / "m", spool_dir / "m" / "a"):
        os.chmod(d, 0o711)
    (spool_dir / "b").symlink_to(world_tmp)
    maida = SpoolPaths.for_user(cfg_for(spool_dir, hash_spool=2), "maida", None)
    bob = SpoolPaths.for_user(cfg_for(spool_dir, hash_spool=2), "bob", None)

    def as_a_user() -> str:
        os.setresuid(5555, 5555, 5555)
        lines = []
        maida.ensure_hash_dirs(lambda prio, text: lines.append(text))
        try:
            bob.ensure_hash_dirs(lambda prio, text: lines.append(text))
        except PopError as error:
            return f"{lines} {error.code.name}"
        return f"{lines} not refused"

    assert in_child(as_a_user) == "[] SYS_PERM"


BAD_NAMES = ["", "..", ".", "../alice", "a/b", "/etc/passwd", "a..b", ".alice", "a\0b",
             "a\nb", "a\tb", "a\x7fb", "x" * (limits.MAX_USER_NAME_OCTETS + 1),
             "é" * (limits.MAX_USER_NAME_OCTETS // 2 + 1)]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_escaping_names_are_refused_with_auth(tmp_path, name):
    with pytest.raises(PopError) as info:
        SpoolPaths.for_user(cfg_for(tmp_path, hash_spool=2, home_dir_misc=True), name, "/h")
    assert info.value.code is RespCode.AUTH
    assert info.value.text == "Invalid user name."


@pytest.mark.parametrize("name", ["alice", "a.b", "user-1", "x_y", "ü", "a" * limits.MAX_USER_NAME_OCTETS])
def test_accepted_names_stay_in_their_directory(tmp_path, name):
    check_user_name(name)
    for hashing in (0, 1, 2):
        p = SpoolPaths.for_user(cfg_for(tmp_path, hash_spool=hashing), name, None)
        for path in (p.spool, p.lock, p.temp_drop, p.cache):
            assert os.path.realpath(path).startswith(str(tmp_path) + "/")
            assert os.path.basename(path).endswith(
                (name, name + ".lock", f".{name}.pop", f".{name}.cache"))


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_refused_names_make_no_system_call_on_the_spool_dir(tmp_path):
    """Proof by strace: for a refused name, no system call touches anything under the spool
    directory (nor the home), even with hash dirs and check-old-spool-loc enabled."""
    spool_dir = tmp_path / "spool-sentinel"
    spool_dir.mkdir()
    (spool_dir / "victim").write_text("mail")
    script = textwrap.dedent(f"""
        from qpopper.config import Config
        from qpopper.pop3.responses import PopError
        from qpopper.spool.paths import SpoolPaths
        cfg = Config.defaults().replace(spool_dir={str(spool_dir)!r}, hash_spool=1,
                                        check_hash_dir=True, home_dir_mail=".mail")
        import sys
        print("MARK-START", file=sys.stderr, flush=True)
        for name in {BAD_NAMES!r}:
            try:
                p = SpoolPaths.for_user(cfg, name, {str(spool_dir)!r})
                p.ensure_hash_dirs()
            except PopError:
                pass
            else:
                raise SystemExit("accepted " + repr(name))
        print("MARK-END", file=sys.stderr, flush=True)
    """)
    trace = tmp_path / "trace"
    run = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%desc", "-o", str(trace),
                          sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=50, cwd=str(REPO))
    assert run.returncode == 0, run.stderr
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "MARK-START" in line)
    end = next(i for i, line in enumerate(lines) if "MARK-END" in line)
    assert end > start
    touched = [line for line in lines[start:end] if str(spool_dir) in line]
    assert touched == []
    assert sorted(os.listdir(spool_dir)) == ["victim"]
