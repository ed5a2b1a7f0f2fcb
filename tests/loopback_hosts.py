"""Real database hosts on this machine, reached over SSH, for the Molecule `remote` scenario and the SSH
fleet benchmark: no containers, nothing beyond loopback.

For every environment of an environments file (its `host` a 127.x.y.z address, its `port` the
PostgreSQL port) `up` makes:

- an unprivileged OS user `bridge_<env>` (no password, no sudo) whose home holds the host's state;
- an sshd of its own (Debian's openssh-server) on `<host>:<port + 100>`, key authentication only, that
  lets in that one user with the controller key written under the state folder; its host key goes into the
  state folder's known_hosts, so the controller checks it (StrictHostKeyChecking yes);
- a PostgreSQL cluster owned by that user, listening on `<host>:<port>` only, with `ssl = on` (server
  certificate for the address, signed by a CA generated here) and `scram-sha-256` for every login except
  the user's own peer login as `postgres` over its socket; the migration user `bridge_migrator` is not a
  superuser and owns the database;
- random passwords for `postgres` and `bridge_migrator`, only in an Ansible Vault file
  (`vault.yml`, encrypted with the state folder's `vault-pass`) and, for the environments the control node
  serves, the admin line of a 0600 `controller.pgpass`.

`down` stops and removes all of it (clusters, sshd, users with their homes and crontabs, state folder).
Run as root (user creation, sshd). Usage:

    loopback_hosts.py up   --config molecule/remote/environments.toml --state molecule/remote/.remote \
                           --vault-vars molecule/remote/group_vars/all/vault.yml [--controller remote_b]
    loopback_hosts.py down --config ... --state ...
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

SSH_PORT_OFFSET = 100  # the sshd of a host listens on its PostgreSQL port + 100 (group_vars say the same)
MIGRATOR = "bridge_migrator"
DATABASE = "omninode_bridge"


def pg_bindir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        sys.exit("loopback_hosts: no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
    return found[-1].parent


def os_user(env: str) -> str:
    return f"bridge_{env}"


def hosts(config: Path, only: list[str] | None) -> dict[str, dict]:
    data = tomllib.loads(config.read_text())
    envs = data["environments"]
    out = {}
    for name, settings in envs.items():
        if only and name not in only:
            continue
        address = ipaddress.ip_address(settings["host"])
        if not address.is_loopback:
            sys.exit(f"loopback_hosts: {name}'s host {address} is not a loopback address; refusing")
        out[name] = {"host": str(address), "port": int(settings["port"]), "user": os_user(name)}
    return out


def run(argv: list[str], *, user: str | None = None, stdin: str | None = None, check: bool = True, **kw):
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    done = subprocess.run(argv, input=stdin, text=True, capture_output=True, **kw)
    if check and done.returncode:
        sys.exit(f"loopback_hosts: {' '.join(argv[:6])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def write(path: Path, text: str, mode: int = 0o644, owner: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    if owner:
        shutil.chown(path, owner, owner)


# --------------------------------------------------------------------------- up


def make_ca(state: Path) -> None:
    tls = state / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    if (tls / "ca.crt").exists():
        return
    run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bridge-db loopback test CA",
            "-keyout",
            str(tls / "ca.key"),
            "-out",
            str(tls / "ca.crt"),
        ]
    )
    (tls / "ca.key").chmod(0o600)


def server_cert(state: Path, env: str, address: str, home: Path, user: str) -> None:
    tls = state / "tls"
    key, csr, crt = tls / f"{env}.key", tls / f"{env}.csr", tls / f"{env}.crt"
    ext = tls / f"{env}.ext"
    ext.write_text(f"subjectAltName = IP:{address}\nextendedKeyUsage = serverAuth\n")
    run(
        [
            "openssl",
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            f"/CN={address}",
            "-keyout",
            str(key),
            "-out",
            str(csr),
        ]
    )
    run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(tls / "ca.crt"),
            "-CAkey",
            str(tls / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(crt),
        ]
    )
    for src, name, mode in ((crt, "server.crt", 0o644), (key, "server.key", 0o600)):
        target = home / "tls" / name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(src, target)
        target.chmod(mode)
        shutil.chown(target.parent, user, user)
        shutil.chown(target, user, user)
    key.unlink()


MARK = ".bridge-loopback-host"  # in the home of every user this tool made; it touches no other user


def make_user(user: str) -> Path:
    try:
        existing = Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/bash", user])
        (Path(pwd.getpwnam(user).pw_dir) / MARK).touch()
    else:
        if not (existing / MARK).exists():
            sys.exit(
                f"loopback_hosts: the OS user {user} exists and was not made by this tool; refusing to take it over"
            )
    # '*': no password login, but not locked ('!'), which sshd without PAM would refuse for keys too
    run(["usermod", "--password", "*", user])
    home = Path(pwd.getpwnam(user).pw_dir)
    home.chmod(0o700)
    return home


def client_key(state: Path) -> Path:
    key = state / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bridge-db controller", "-f", str(key)])
    return key


def start_sshd(state: Path, env: str, spec: dict, home: Path, key: Path) -> None:
    user, folder = spec["user"], state / "ssh" / env
    folder.mkdir(parents=True, exist_ok=True)
    host_key = folder / "ssh_host_ed25519_key"
    if not host_key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
    write(home / ".ssh" / "authorized_keys", (key.with_suffix(".pub")).read_text(), 0o600, user)
    (home / ".ssh").chmod(0o700)
    shutil.chown(home / ".ssh", user, user)
    port = spec["port"] + SSH_PORT_OFFSET
    config = folder / "sshd_config"
    write(
        config,
        "\n".join(
            [
                f"Port {port}",
                f"ListenAddress {spec['host']}",
                f"HostKey {host_key}",
                f"PidFile {folder / 'sshd.pid'}",
                "AuthorizedKeysFile .ssh/authorized_keys",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                f"AllowUsers {user}",
                "UsePAM no",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "PrintMotd no",
                "Subsystem sftp internal-sftp",
                "LogLevel VERBOSE",
                "",
            ]
        ),
        0o600,
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    stop_sshd(folder)
    run(["/usr/sbin/sshd", "-f", str(config), "-E", str(folder / "sshd.log")])
    public = host_key.with_suffix(".pub").read_text().split()
    with open(state / "ssh" / "known_hosts", "a") as known:
        known.write(f"[{spec['host']}]:{port} {public[0]} {public[1]}\n")


def start_cluster(env: str, spec: dict, home: Path, passwords: dict) -> None:
    user, bindir = spec["user"], pg_bindir()
    data, socket = home / "pgdata", home / "run"
    if not (data / "PG_VERSION").exists():
        run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale",
                "C.UTF-8",
                "--auth-local",
                "peer",
                "--auth-host",
                "scram-sha-256",
            ],
            user=user,
            cwd=home,
        )
    socket.mkdir(exist_ok=True)
    shutil.chown(socket, user, user)
    conf = "\n".join(
        [
            f"listen_addresses = '{spec['host']}'",
            f"port = {spec['port']}",
            f"unix_socket_directories = '{socket}'",
            "ssl = on",
            f"ssl_cert_file = '{home / 'tls' / 'server.crt'}'",
            f"ssl_key_file = '{home / 'tls' / 'server.key'}'",
            "password_encryption = 'scram-sha-256'",
            "shared_preload_libraries = 'pg_stat_statements'",
            "fsync = off",
            "synchronous_commit = off",
            "log_statement = 'none'",
            "",
        ]
    )
    write(data / "conf.d" / "loopback.conf", conf, 0o600, user)
    shutil.chown(data / "conf.d", user, user)
    with open(data / "postgresql.conf", "a+") as main:
        main.seek(0)
        if "include_dir = 'conf.d'" not in main.read():
            main.write("\ninclude_dir = 'conf.d'\n")
    # TCP only with TLS and scram; the socket: the OS user as postgres (peer), anyone else with scram
    write(
        data / "pg_hba.conf",
        "local all postgres peer map=owner\nlocal all all scram-sha-256\nhostssl all all 127.0.0.0/8 scram-sha-256\n",
        0o600,
        user,
    )
    write(data / "pg_ident.conf", f"owner {user} postgres\n", 0o600, user)
    run(
        [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "postgresql.log"), "-w", "-t", "60", "start"],
        user=user,
        cwd=home,
    )
    # passwords through psql's standard input (never an argument); the server logs no statement, and
    # pg_stat_statements (preloaded) must not keep the ALTER ROLE text in pgss_query_texts.stat either
    run(
        [
            str(bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(socket),
            "-p",
            str(spec["port"]),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ],
        user=user,
        cwd=home,
        stdin=f"""
        SET pg_stat_statements.track_utility = off;
        ALTER ROLE postgres PASSWORD '{passwords["admin"]}';
        SELECT 'CREATE ROLE {MIGRATOR} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{MIGRATOR}')\\gexec
        ALTER ROLE {MIGRATOR} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{passwords["migrator"]}';
        SELECT 'CREATE DATABASE {DATABASE} OWNER {MIGRATOR}'
          WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec
        \\connect {DATABASE}
        -- what docs/recovery.md asks of an operator: the migrator may take a production run's restore point
        GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal() TO {MIGRATOR};
    """,
    )


def write_vault(state: Path, vault_vars: Path, passwords: dict[str, dict]) -> None:
    secret = state / "vault-pass"
    if not secret.exists():
        write(secret, secrets.token_urlsafe(32) + "\n", 0o600)
    plain = "---\n" + "vault_bridge_db_passwords: " + json.dumps(passwords) + "\n"
    vault_vars.parent.mkdir(parents=True, exist_ok=True)
    vault = Path(sys.executable).parent / "ansible-vault"
    # only this secret: a vault password from the caller's environment (Molecule sets one) would make
    # two and ansible-vault refuses to choose
    env = {
        k: v for k, v in os.environ.items() if k not in ("ANSIBLE_VAULT_PASSWORD_FILE", "ANSIBLE_VAULT_IDENTITY_LIST")
    }
    # the plain text goes through a pipe, never to disk
    done = subprocess.run(
        [str(vault), "encrypt", "--vault-password-file", str(secret), "--output", "-", "-"],
        input=plain,
        text=True,
        capture_output=True,
        env=env,
    )
    if done.returncode:
        sys.exit(f"loopback_hosts: ansible-vault encrypt failed: {done.stderr.strip()}")
    write(vault_vars, done.stdout, 0o600)


def up(args) -> None:
    state = Path(args.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    specs = hosts(Path(args.config), args.only)
    (state / "ssh").mkdir(exist_ok=True)
    # keep other environments' host keys (an earlier `up --only`); this run's hosts get theirs again
    known = state / "ssh" / "known_hosts"
    ours = tuple(f"[{spec['host']}]:{spec['port'] + SSH_PORT_OFFSET} " for spec in specs.values())
    kept = [line for line in (known.read_text().splitlines() if known.exists() else []) if not line.startswith(ours)]
    known.write_text("".join(line + "\n" for line in kept))
    make_ca(state)
    key = client_key(state)
    passwords: dict[str, dict] = {}
    controller_lines = []
    for env, spec in specs.items():
        home = make_user(spec["user"])
        passwords[env] = {"admin": secrets.token_urlsafe(24), "migrator": secrets.token_urlsafe(24)}
        server_cert(state, env, spec["host"], home, spec["user"])
        start_sshd(state, env, spec, home, key)
        start_cluster(env, spec, home, passwords[env])
        if env in (args.controller or []):
            controller_lines.append(f"{spec['host']}:{spec['port']}:*:postgres:{passwords[env]['admin']}")
    write(state / "controller.pgpass", "".join(line + "\n" for line in controller_lines), 0o600)
    if args.vault_vars:
        write_vault(state, Path(args.vault_vars), passwords)
    print(json.dumps({"hosts": specs}, indent=2))


# --------------------------------------------------------------------------- down


def stop_sshd(folder: Path) -> None:
    pidfile = folder / "sshd.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    pidfile.unlink(missing_ok=True)


def down(args) -> None:
    state = Path(args.state).resolve()
    bindir = pg_bindir()
    for env, spec in hosts(Path(args.config), args.only).items():
        user = spec["user"]
        stop_sshd(state / "ssh" / env)
        try:
            home = Path(pwd.getpwnam(user).pw_dir)
        except KeyError:
            continue
        if not (home / MARK).exists():
            print(f"loopback_hosts: leaving {user} alone: not made by this tool", file=sys.stderr)
            continue
        if (home / "pgdata" / "postmaster.pid").exists():
            run(
                [str(bindir / "pg_ctl"), "-D", str(home / "pgdata"), "-m", "immediate", "-w", "stop"],
                user=user,
                cwd="/",
                check=False,
            )
        run(["pkill", "-KILL", "-u", user], check=False)  # anything the user still runs (a backup, a shell)
        run(["crontab", "-r", "-u", user], check=False)
        run(["userdel", "--remove", user], check=False)
    if args.vault_vars:
        Path(args.vault_vars).unlink(missing_ok=True)
    shutil.rmtree(state, ignore_errors=True)


# --------------------------------------------------------------------------- leak checks


def watch(args) -> None:
    """Run a command while sampling every process's command line (`ps`) every 20 ms; its output and the
    samples go to files that `leaks` then searches. Exits with the command's code."""
    import threading

    stop = threading.Event()

    def sample() -> None:
        with open(args.ps_log, "a") as log:
            while not stop.is_set():
                log.write(
                    subprocess.run(["ps", "-eo", "user,args", "--no-headers"], capture_output=True, text=True).stdout
                )
                stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(args.output, "w") as out:
            code = subprocess.run(args.command, stdout=out, stderr=subprocess.STDOUT).returncode
    finally:
        stop.set()
        sampler.join()
    sys.exit(code)


def leaks(args) -> None:
    """Every file under the given paths that holds one of the secrets read from standard input (one per
    line; never an argument), with its mode and owner, as JSON."""
    wanted = [line.strip().encode() for line in sys.stdin if line.strip()]
    found = []
    for root in args.paths:
        for folder, _, files in os.walk(root):
            for name in files:
                path = Path(folder) / name
                try:
                    if path.is_symlink() or not path.is_file():
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                if any(secret in data for secret in wanted):
                    info = path.stat()
                    found.append(
                        {
                            "path": str(path),
                            "mode": oct(info.st_mode & 0o777),
                            "owner": pwd.getpwuid(info.st_uid).pw_name,
                        }
                    )
    print(json.dumps({"files": found}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("watch", "leaks"):
        argv = sys.argv[2:]
        parser = argparse.ArgumentParser(prog=f"loopback_hosts.py {sys.argv[1]}")
        if sys.argv[1] == "watch":  # watch --ps-log F --output F -- COMMAND...
            split = argv.index("--") if "--" in argv else len(argv)
            parser.add_argument("--ps-log", required=True)
            parser.add_argument("--output", required=True)
            args = parser.parse_args(argv[:split])
            args.command = argv[split + 1 :]
            watch(args)
        else:
            parser.add_argument("paths", nargs="+")
            leaks(parser.parse_args(argv))
        return
    if os.geteuid() != 0:
        sys.exit("loopback_hosts: run as root (it creates OS users and starts sshd)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--config", required=True, help="environments file whose environments become hosts")
    parser.add_argument("--state", required=True, help="folder for keys, certificates, sshd configs")
    parser.add_argument("--vault-vars", help="write the passwords here, encrypted with <state>/vault-pass")
    parser.add_argument(
        "--controller", action="append", help="environment the control node serves (admin .pgpass line)"
    )
    parser.add_argument("--only", action="append", help="only this environment (repeat)")
    args = parser.parse_args()
    up(args) if args.action == "up" else down(args)


if __name__ == "__main__":
    main()
