//! The container deployment — `Dockerfile`, `docker-compose.yml`, `config/production.toml` — checked
//! without a Docker engine: every runvisor command line in them is one the binary accepts, every
//! `RUNVISOR__…` variable is a setting it accepts and shows, and the services have the shape the
//! platform relies on (`--profile consumer`, `--scale execution-consumer=3`, the API on port 8000).
//! Subcommands come from `runvisor --help` and settings from `runvisor config`, not from lists here.
//!
//! The compose file is read as `docker-compose config` prints it (parsed with serde_norway), not as
//! written: compose itself resolves `${VAR:-default}` and prints a normal form — `environment` as a
//! map, `depends_on` with conditions, `healthcheck.disable` as `test: [NONE]` — so this file
//! re-implements neither interpolation nor the short syntaxes, and reads what compose will run.
//! docker-compose is needed anyway to validate the file (.ci/run installs Debian's 1.29). It runs with
//! an empty environment and an empty env file: the file's own defaults are checked, whoever runs it.
//!
//! `RUNVISOR_TEST_COMPOSE_FILE` and `RUNVISOR_TEST_DOCKERFILE` point the checks at other files (to
//! try a change out, or to see a check fail).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_norway::Value;

const PRODUCTION: &str = "config/production.toml";
const ENV_PREFIX: &str = "RUNVISOR__";

/// Every runvisor command line — compose `command`/`entrypoint` and healthcheck `test`, the
/// Dockerfile's ENTRYPOINT + CMD and HEALTHCHECK — runs a subcommand `runvisor --help` lists, with
/// arguments runvisor's parser accepts.
#[test]
fn runvisor_command_lines_are_real_subcommands() {
    let (cli, compose, dockerfile) = (Cli::from_help(), Compose::load(), Dockerfile::load());
    let d = &dockerfile.name;
    let entrypoint = dockerfile.exec_form("ENTRYPOINT");
    assert!(
        entrypoint.len() == 1 && is_runvisor(&entrypoint[0]),
        "{d}: ENTRYPOINT must be [\"runvisor\"], so that a command is runvisor's arguments; found {entrypoint:?}"
    );
    cli.check(&format!("{d}, ENTRYPOINT + CMD"), &dockerfile.exec_form("CMD"));
    let health = runvisor_invocations(&dockerfile.healthcheck().unwrap_or_default());
    let subcommands: Vec<String> = health.iter().map(|args| cli.check(&format!("{d}, HEALTHCHECK"), args)).collect();
    let probes = subcommands.iter().any(|s| s == "healthcheck");
    assert!(probes, "{d}: HEALTHCHECK must run `runvisor healthcheck` (the image has no curl): {health:?}");
    let mut checked = 0;
    for (name, service) in &compose.services {
        let what = format!("{}, service `{name}`", compose.name);
        if let Some((key, args)) = runvisor_args(service, &dockerfile) {
            cli.check(&format!("{what}, {key}"), &args);
            checked += 1;
        }
        for args in runvisor_invocations(&healthcheck(service, None).unwrap_or_default()) {
            cli.check(&format!("{what}, healthcheck.test"), &args);
        }
    }
    assert!(checked >= 3, "{}: expected runvisor services (migrate, consume, api), found {checked}", compose.name);
}

/// Each runvisor service's settings — the image's ENV, then the service's `environment`, over the
/// `--config` file its command names — are accepted by `runvisor config`, which shows every value;
/// and librdkafka accepts its kafka.properties.
#[test]
fn runvisor_settings_of_every_service_are_accepted_and_shown() {
    let (cli, compose, dockerfile) = (Cli::from_help(), Compose::load(), Dockerfile::load());
    let mut checked = 0;
    for name in compose.services.keys() {
        let Some(run) = RunvisorService::new(&cli, &compose, &dockerfile, name) else { continue };
        let config = run.config();
        for (key, value) in &run.env {
            let shown = shown_value(&config, key)
                .unwrap_or_else(|| panic!("{}: {key}: `runvisor config` shows no such setting", run.what));
            assert!(shows(&shown, key, value), "{}: {key} = {value:?}, `runvisor config` shows {shown}", run.what);
            checked += 1;
        }
        librdkafka_accepts(&run.what, &config);
    }
    assert!(checked > 0, "{}: no service passes RUNVISOR__ variables", compose.name);
}

#[test]
fn compose_services_have_the_shape_the_platform_relies_on() {
    let (cli, compose, dockerfile) = (Cli::from_help(), Compose::load(), Dockerfile::load());
    let c = &compose.name;
    let run = |name: &str, role: &str| {
        let run = RunvisorService::new(&cli, &compose, &dockerfile, name);
        let run = run.unwrap_or_else(|| panic!("{c}, service `{name}`: must run the image the Dockerfile builds"));
        assert_eq!(run.role, role, "{c}, service `{name}`: the runvisor subcommand");
        run.config()
    };

    // Executors: started with --profile consumer, scaled with --scale execution-consumer=N, drained on stop.
    let consumer = compose.service("execution-consumer");
    let what = format!("{c}, service `execution-consumer`");
    assert_eq!(words(&consumer["profiles"]), Some(vec!["consumer".into()]), "{what}: profiles");
    assert!(consumer["container_name"].is_null(), "{what}: container_name prevents --scale execution-consumer=3");
    let published: Vec<&Value> = ports(consumer).filter(|p| port(p).0.is_some()).collect();
    assert!(published.is_empty(), "{what}, ports: {published:?} bind host ports, which replicas share; use `expose`");
    let config = run("execution-consumer", "consume");
    let grace_ms = get(&config, &["executor", "shutdown_grace_ms"]).and_then(toml::Value::as_integer);
    let grace_ms = grace_ms.expect("`runvisor config` shows executor.shutdown_grace_ms");
    let stop = consumer["stop_grace_period"].as_str().unwrap_or("10s"); // Docker's default
    let stop_ms = parse_duration(stop).unwrap_or_else(|| panic!("{what}: stop_grace_period {stop:?} is no duration"));
    assert!(
        stop_ms.as_millis() as i64 >= grace_ms + 5_000,
        "{what}: stop_grace_period ({stop}) must exceed executor.shutdown_grace_ms ({grace_ms} ms) by 5 s, or runs \
         are SIGKILLed mid-drain"
    );

    // The API: started with --profile api, on the platform's port 8000.
    let api = compose.service("api");
    assert_eq!(words(&api["profiles"]), Some(vec!["api".into()]), "{c}, service `api`: profiles");
    assert!(
        ports(api).any(|p| port(p) == (Some(8000), Some(8000))),
        "{c}, service `api`, ports: must publish 8000:8000, found {:?}",
        api["ports"]
    );
    let listen = get(&run("api", "api"), &["api", "listen"]).and_then(|l| l.as_str()?.parse().ok());
    assert!(
        listen.is_some_and(|address: std::net::SocketAddr| address.port() == 8000),
        "{c}, service `api`: api.listen (RUNVISOR__API__LISTEN) must use the published port 8000, is {listen:?}"
    );

    // Start order by condition (service_started orders nothing); a health check on what runs for long.
    let one_shot: BTreeSet<String> = (compose.services.values().flat_map(depends_on))
        .filter(|(_, condition)| condition == "service_completed_successfully")
        .map(|(name, _)| name)
        .collect();
    for (name, service) in &compose.services {
        let what = format!("{c}, service `{name}`");
        for (dependency, condition) in depends_on(service) {
            assert!(
                matches!(condition.as_str(), "service_healthy" | "service_completed_successfully"),
                "{what}, depends_on.{dependency}: condition must be service_healthy or service_completed_successfully, \
                 found {condition:?}"
            );
        }
        assert!(
            healthcheck(service, Some(&dockerfile)).is_some() || one_shot.contains(name),
            "{what}: a healthcheck is required (only services waited for with service_completed_successfully \
             may go without)"
        );
    }
}

#[test]
fn dockerfile_is_multi_stage_and_its_runtime_stage_is_non_root_and_exposes_8000_and_9464() {
    let dockerfile = Dockerfile::load();
    let d = &dockerfile.name;
    assert!(dockerfile.stages.len() >= 2, "{d}: expected a multi-stage build (a build and a runtime stage)");
    let user = dockerfile.last("USER").unwrap_or_default();
    let root = matches!(user.split(':').next(), Some("" | "root" | "0") | None);
    assert!(!root, "{d}: the runtime stage must switch to a non-root USER, found {user:?}");
    let exposed: Vec<&str> = (dockerfile.runtime().iter().filter(|(k, _)| k == "EXPOSE"))
        .flat_map(|(_, args)| args.split_whitespace())
        .map(|port| port.trim_end_matches("/tcp"))
        .collect();
    for port in ["8000", "9464"] {
        assert!(exposed.contains(&port), "{d}: the runtime stage must EXPOSE {port}, found {exposed:?}");
    }
}

/// The build stage copies only what the build reads (so target/ and .git stay out of it), so it must
/// copy every workspace member and every repository file rustc reads for the binary — sources and
/// include_str!/include_bytes! targets (found in the sources: Cargo's dep-info file exists only after
/// a `cargo build`, not after `cargo test` alone).
#[test]
fn dockerfile_build_stage_copies_everything_the_build_reads() {
    let dockerfile = Dockerfile::load();
    let d = &dockerfile.name;
    let build = (dockerfile.stages.iter().find(|s| s.iter().any(|(k, a)| k == "RUN" && a.contains("cargo build"))))
        .unwrap_or_else(|| panic!("{d}: no stage RUNs `cargo build`"));
    let copies = build.iter().filter(|(k, args)| matches!(k.as_str(), "COPY" | "ADD") && !args.contains("--from"));
    let sources: Vec<&str> = copies
        .flat_map(|(_, args)| {
            let paths: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            paths[..paths.len().saturating_sub(1)].to_vec()
        })
        .map(|s| s.trim_start_matches("./").trim_end_matches('/'))
        .collect();
    let covered = |path: &str| sources.iter().any(|s| *s == "." || *s == path || path.starts_with(&format!("{s}/")));

    let manifest: toml::Table = toml::from_str(&read(&repo().join("Cargo.toml"))).expect("Cargo.toml is TOML");
    let members = get(&manifest, &["workspace", "members"]).and_then(toml::Value::as_array).cloned();
    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock", "src"].map(String::from).into();
    for member in members.iter().flatten().filter_map(toml::Value::as_str).filter(|m| *m != ".") {
        needed.extend(["Cargo.toml", "src"].map(|f| format!("{member}/{f}").trim_start_matches("./").to_string()));
    }
    // Files the sources pull in at compile time, relative to the repository.
    let mut sources_dirs: Vec<PathBuf> = vec![repo().join("src")];
    for member in members.iter().flatten().filter_map(toml::Value::as_str).filter(|m| *m != ".") {
        sources_dirs.push(repo().join(member).join("src"));
    }
    while let Some(dir) = sources_dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources_dirs.push(path);
                continue;
            }
            let text = read(&path);
            for call in ["include_str!(\"", "include_bytes!(\""] {
                for (at, _) in text.match_indices(call) {
                    let rest = &text[at + call.len()..];
                    let target = path.parent().unwrap().join(&rest[..rest.find('"').unwrap_or(0)]);
                    let target = target.canonicalize().unwrap_or_else(|e| panic!("{}: {call}…): {e}", path.display()));
                    needed.insert(shown(&target));
                }
            }
        }
    }
    assert!(needed.iter().any(|p| p == "config/default.toml"), "the sources include config/default.toml: {needed:?}");
    let mut missing: Vec<&String> = needed.iter().filter(|path| !covered(path)).collect();
    missing.retain(|path| !needed.iter().any(|dir| path.starts_with(&format!("{dir}/")) && !covered(dir)));
    assert!(missing.is_empty(), "{d}: the build stage does not COPY {missing:?}, which the build reads: {sources:?}");
}

#[test]
fn production_config_is_accepted_and_names_no_embedded_service() {
    let config = runvisor_config(Some(&repo().join(PRODUCTION)), &[]).unwrap_or_else(|e| panic!("{PRODUCTION}: {e}"));
    let url = get(&config, &["database", "url"]).and_then(toml::Value::as_str).unwrap_or_default();
    assert!(url.starts_with("postgres"), "{PRODUCTION}: database.url must be PostgreSQL, not SQLite; found {url:?}");
    let brokers = get(&config, &["kafka", "brokers"]).and_then(toml::Value::as_str).unwrap_or_default();
    assert_ne!(brokers, "embedded", "{PRODUCTION}: kafka.brokers must not be the in-process broker");
    librdkafka_accepts(PRODUCTION, &config);
}

#[test]
fn docker_compose_accepts_the_file() {
    let file = under_test("RUNVISOR_TEST_COMPOSE_FILE", "docker-compose.yml");
    let output = docker_compose(&file, &["config", "--quiet"]);
    assert!(output.status.success(), "`docker-compose config --quiet` refuses {}:\n{}", shown(&file), text(&output));
}

// ---------------------------------------------------------------------------------------------------
// Files and processes

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repository's `default`, or the file the environment variable names.
fn under_test(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable).map_or_else(|| repo().join(default), PathBuf::from)
}

/// A path for messages: relative to the repository when inside it.
fn shown(path: &Path) -> String {
    path.strip_prefix(repo()).unwrap_or(path).display().to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `docker-compose --profile consumer --profile api ARGS` on `file`, with an empty environment and
/// env file, so that `${VAR:-default}` takes the file's defaults.
fn docker_compose(file: &Path, args: &[&str]) -> Output {
    let env_file = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new("docker-compose");
    command.arg("--env-file").arg(env_file.path()).arg("-f").arg(file);
    command.args(["--profile", "consumer", "--profile", "api"]).args(args);
    command.env_clear().envs(std::env::var_os("PATH").map(|path| ("PATH", path)));
    let file = shown(file);
    let hint = ".ci/run installs it (Debian's package: apt-get install docker-compose)";
    command.output().unwrap_or_else(|e| panic!("cannot run docker-compose ({e}) to check {file}; {hint}"))
}

fn runvisor(args: &[&str], env: &[(String, String)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_runvisor"));
    command.args(args).current_dir(repo()).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    command.output().expect("the runvisor binary runs")
}

fn is_runvisor(program: &str) -> bool {
    program == "runvisor" || program.ends_with("/runvisor")
}

// ---------------------------------------------------------------------------------------------------
// runvisor, as its help and `runvisor config` describe it

/// The subcommands `runvisor --help` lists.
struct Cli(BTreeSet<String>);

impl Cli {
    fn from_help() -> Cli {
        let output = runvisor(&["--help"], &[]);
        assert!(output.status.success(), "runvisor --help failed:\n{}", text(&output));
        let help = String::from_utf8(output.stdout).unwrap();
        let section = help.lines().skip_while(|l| l.trim() != "Commands:").skip(1).take_while(|l| !l.trim().is_empty());
        // `help` is listed too, but a deployment that runs `runvisor help` runs nothing.
        let commands: BTreeSet<String> =
            section.filter_map(|l| l.split_whitespace().next()).filter(|c| *c != "help").map(String::from).collect();
        assert!(commands.len() >= 5, "could not read the subcommands from runvisor --help:\n{help}");
        Cli(commands)
    }

    /// Asserts that runvisor's parser accepts `args` — `runvisor ARGS --help` exits 0 only if every
    /// argument before `--help` is valid — and that they run a listed subcommand, which it returns:
    /// the one the usage line of that help names (`Usage: runvisor consume [OPTIONS]`).
    fn check(&self, what: &str, args: &[String]) -> String {
        let command = format!("runvisor {}", args.join(" "));
        let output = runvisor(&[args.iter().map(String::as_str).collect(), vec!["--help"]].concat(), &[]);
        assert!(output.status.success(), "{what}: runvisor does not accept `{command}`:\n{}", text(&output));
        let help = String::from_utf8_lossy(&output.stdout);
        let usage = help.lines().find_map(|l| l.strip_prefix("Usage: runvisor ")).unwrap_or_default();
        let subcommand = usage.split_whitespace().next().filter(|s| self.0.contains(*s));
        let listed = &self.0;
        subcommand.unwrap_or_else(|| panic!("{what}: `{command}` runs none of the subcommands {listed:?}")).to_string()
    }
}

/// `runvisor [--config FILE] config` with exactly `env`: the effective configuration, or the error.
fn runvisor_config(file: Option<&Path>, env: &[(String, String)]) -> Result<toml::Table, String> {
    let mut args = Vec::new();
    if let Some(file) = file {
        args.extend(["--config", file.to_str().unwrap()]);
    }
    args.push("config");
    let output = runvisor(&args, env);
    if !output.status.success() {
        return Err(format!("`runvisor {}` with {env:?} fails:\n{}", args.join(" "), text(&output)));
    }
    toml::from_str(&String::from_utf8_lossy(&output.stdout))
        .map_err(|e| format!("`runvisor config` printed no TOML ({e}):\n{}", text(&output)))
}

fn get<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(table.get(*first)?, |value, key| value.get(*key))
}

/// The value `runvisor config` shows for a `RUNVISOR__…` variable's setting. Keys are lower-cased;
/// under kafka.properties underscores stand for dots (src/config.rs).
fn shown_value(config: &toml::Table, variable: &str) -> Option<toml::Value> {
    let path: Vec<String> = variable.strip_prefix(ENV_PREFIX)?.split("__").map(str::to_lowercase).collect();
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["kafka", "properties", name @ ..] => get(config, &["kafka", "properties", &name.join(".").replace('_', ".")]),
        path => get(config, path),
    }
    .cloned()
}

/// Whether `shown` is what `value` sets (secrets are shown masked).
fn shows(shown: &toml::Value, variable: &str, value: &str) -> bool {
    let secret = variable.ends_with("__API__AUTH_TOKEN") || variable.contains("__AUTH_CONFIG__");
    match shown {
        // `runvisor config` masks secrets, the database password among them.
        toml::Value::String(s) => s == value || (secret && s == "***") || *s == runvisor::db::redact(value),
        other => other.to_string() == value.trim(),
    }
}

/// librdkafka — the build runvisor links, through its rdkafka dependency — checks every name and
/// value of kafka.properties as `rd_kafka_conf_set` does when runvisor makes a client: unknown
/// names, bad values and features this build lacks (zstd, SSL) are refused. No client is made.
fn librdkafka_accepts(what: &str, config: &toml::Table) {
    let properties = get(config, &["kafka", "properties"]).and_then(toml::Value::as_table);
    let mut client = rdkafka::ClientConfig::new();
    for (name, value) in properties.into_iter().flatten() {
        client.set(name, value.as_str().map_or_else(|| value.to_string(), String::from));
    }
    if let Err(error) = client.create_native_config() {
        panic!("{what}: librdkafka refuses kafka.properties: {error}");
    }
}

/// Compose durations: `45s`, `1m30s`, `1500ms`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (mut total, mut rest) = (Duration::ZERO, text.trim());
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, after) = (rest[..digits].parse::<f64>().ok()?, &rest[digits..]);
        let unit = &after[..after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len())];
        let units = [("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001), ("us", 1e-6)];
        total += Duration::from_secs_f64(number * units.iter().find(|(u, _)| *u == unit)?.1);
        rest = &after[unit.len()..];
    }
    (!text.trim().is_empty()).then_some(total)
}

/// The runvisor argument lists of a healthcheck test (`[CMD, program, args…]` or
/// `[CMD-SHELL, script]`). A script is split at `||`, `&&` and `;`, then at whitespace — no quoting,
/// which the health checks here do not need; `exec` and redirections are dropped.
fn runvisor_invocations(test: &[String]) -> Vec<Vec<String>> {
    let redirection = |w: &&str| w.trim_start_matches(|c: char| c.is_ascii_digit()).starts_with(['>', '<']);
    let argvs: Vec<Vec<String>> = match test.split_first() {
        Some((form, argv)) if form == "CMD" => vec![argv.to_vec()],
        Some((form, script)) if form == "CMD-SHELL" => (script.join(" ").replace("&&", "||").replace(';', "||"))
            .split("||")
            .map(|p| p.split_whitespace().skip_while(|w| *w == "exec").filter(|w| !redirection(w)).map(String::from))
            .map(Iterator::collect)
            .collect(),
        _ => Vec::new(),
    };
    let runvisor = argvs.iter().filter_map(|argv| argv.split_first().filter(|(program, _)| is_runvisor(program)));
    runvisor.map(|(_, args)| args.to_vec()).collect()
}

// ---------------------------------------------------------------------------------------------------
// docker-compose.yml, as `docker-compose config` prints it

struct Compose {
    name: String,
    services: BTreeMap<String, Value>,
}

impl Compose {
    fn load() -> Compose {
        let file = under_test("RUNVISOR_TEST_COMPOSE_FILE", "docker-compose.yml");
        let name = shown(&file);
        let output = docker_compose(&file, &["config"]);
        assert!(output.status.success(), "`docker-compose config` refuses {name}:\n{}", text(&output));
        let printed: Value = serde_norway::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{name}: cannot read what `docker-compose config` prints: {e}"));
        let services = serde_norway::from_value(printed["services"].clone())
            .unwrap_or_else(|e| panic!("{name}: `docker-compose config` prints no services: {e}"));
        Compose { name, services }
    }

    fn service(&self, name: &str) -> &Value {
        self.services.get(name).unwrap_or_else(|| panic!("{}: no service `{name}`", self.name))
    }
}

/// A string, number or boolean as text.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A list, or a string split at whitespace (a command in string form).
fn words(value: &Value) -> Option<Vec<String>> {
    match value.as_sequence() {
        Some(items) => Some(items.iter().filter_map(scalar).collect()),
        None => Some(value.as_str()?.split_whitespace().map(String::from).collect()),
    }
}

fn ports(service: &Value) -> impl Iterator<Item = &Value> {
    service["ports"].as_sequence().into_iter().flatten()
}

/// (published, target) of a `ports` entry, published 0 for a random host port or a range: long
/// syntax (`published` is a number in docker-compose 1.29's output, a string in Compose v2's), or the
/// `[IP:]HOST:CONTAINER[/PROTOCOL]` string 1.29 prints for an entry with a host IP.
fn port(entry: &Value) -> (Option<u16>, Option<u16>) {
    let number = |v: &Value| scalar(v)?.parse().ok();
    let Some(text) = entry.as_str() else {
        return (entry.get("published").map(|p| number(p).unwrap_or(0)), entry.get("target").and_then(number));
    };
    let mut parts = text.split('/').next().unwrap_or_default().rsplit(':');
    let target = parts.next().and_then(|p| p.parse().ok());
    (parts.next().map(|p| p.parse().unwrap_or(0)), target)
}

/// `depends_on` as (service, condition).
fn depends_on(service: &Value) -> Vec<(String, String)> {
    let entries = service["depends_on"].as_mapping().into_iter().flatten();
    entries
        .map(|(name, spec)| (scalar(name).unwrap_or_default(), scalar(&spec["condition"]).unwrap_or_default()))
        .collect()
}

/// The health check test in force, as `[CMD, …]` or `[CMD-SHELL, script]`: the service's own, else
/// the image's HEALTHCHECK if it runs the image `dockerfile` builds; None if none or disabled.
fn healthcheck(service: &Value, dockerfile: Option<&Dockerfile>) -> Option<Vec<String>> {
    let check = &service["healthcheck"];
    let test = match (&check["test"], dockerfile) {
        _ if check["disable"].as_bool() == Some(true) => return None,
        (Value::String(script), _) => vec!["CMD-SHELL".into(), script.clone()],
        (Value::Null, Some(dockerfile)) if !service["build"].is_null() => dockerfile.healthcheck()?,
        (test, _) => words(test)?,
    };
    test.first().is_some_and(|form| form != "NONE").then_some(test)
}

/// Where runvisor's arguments come from and what they are, if the service runs runvisor: its
/// entrypoint (which resets the image's CMD) and command; or, running the image the Dockerfile
/// builds, the image's ENTRYPOINT and the service's command or the image's CMD.
fn runvisor_args(service: &Value, dockerfile: &Dockerfile) -> Option<(&'static str, Vec<String>)> {
    let image = |form: &str| if service["build"].is_null() { Vec::new() } else { dockerfile.exec_form(form) };
    let (key, argv) = match (words(&service["entrypoint"]), words(&service["command"])) {
        (Some(entrypoint), command) => ("entrypoint", [entrypoint, command.unwrap_or_default()].concat()),
        (None, Some(command)) => ("command", [image("ENTRYPOINT"), command].concat()),
        (None, None) => ("the image's CMD", [image("ENTRYPOINT"), image("CMD")].concat()),
    };
    let (program, args) = argv.split_first()?;
    is_runvisor(program).then(|| (key, args.to_vec()))
}

/// A service running runvisor: its subcommand and its settings.
struct RunvisorService {
    what: String,
    role: String,
    /// The image's RUNVISOR__ ENV (when it runs the image), overridden by the service's `environment`.
    env: Vec<(String, String)>,
    /// The repository file behind `--config`, if the command names one.
    config_file: Option<PathBuf>,
}

impl RunvisorService {
    fn new(cli: &Cli, compose: &Compose, dockerfile: &Dockerfile, name: &str) -> Option<Self> {
        let service = compose.service(name);
        let what = format!("{}, service `{name}`", compose.name);
        let (key, args) = runvisor_args(service, dockerfile)?;
        let role = cli.check(&format!("{what}, {key}"), &args);
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if !service["build"].is_null() {
            env.extend(dockerfile.env());
        }
        let environment = service["environment"].as_mapping().into_iter().flatten();
        for (key, value) in environment.filter(|(k, _)| k.as_str().is_some_and(|k| k.starts_with(ENV_PREFIX))) {
            let key = scalar(key).unwrap();
            let value = scalar(value).unwrap_or_else(|| panic!("{what}, environment.{key}: no value (from the host?)"));
            env.insert(key, value);
        }
        let config = args.iter().position(|a| a == "--config").and_then(|i| args.get(i + 1)).cloned();
        let config = config.or_else(|| args.iter().find_map(|a| Some(a.strip_prefix("--config=")?.to_string())));
        let not_copied = |path| panic!("{what}: {} does not COPY --config {path} into the image", dockerfile.name);
        let config_file = config.map(|path| dockerfile.copied_to(&path).unwrap_or_else(|| not_copied(path)));
        Some(RunvisorService { what, role, env: env.into_iter().collect(), config_file })
    }

    /// The effective configuration, asserting runvisor accepts it.
    fn config(&self) -> toml::Table {
        let refused =
            |e| panic!("{}: its settings (the image's ENV, `environment`, the --config file): {e}", self.what);
        runvisor_config(self.config_file.as_deref(), &self.env).unwrap_or_else(refused)
    }
}

// ---------------------------------------------------------------------------------------------------
// Dockerfile: instructions by keyword, stage by stage, continuation lines joined

struct Dockerfile {
    name: String,
    /// Each stage's instructions as (KEYWORD, arguments).
    stages: Vec<Vec<(String, String)>>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let path = under_test("RUNVISOR_TEST_DOCKERFILE", "Dockerfile");
        let mut stages: Vec<Vec<(String, String)>> = Vec::new();
        let mut current = String::new();
        // Comment lines (and parser directives) are dropped, even inside a continuation.
        for line in read(&path).lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            if let Some(head) = line.strip_suffix('\\') {
                current.push_str(head);
                continue;
            }
            current.push_str(line);
            let instruction = std::mem::take(&mut current);
            let (keyword, args) = instruction.split_once(char::is_whitespace).unwrap_or((&instruction, ""));
            let keyword = keyword.to_ascii_uppercase();
            if keyword == "FROM" {
                stages.push(Vec::new());
            }
            if let Some(stage) = stages.last_mut() {
                stage.push((keyword, args.trim().to_string()));
            }
        }
        Dockerfile { name: shown(&path), stages }
    }

    fn runtime(&self) -> &[(String, String)] {
        self.stages.last().map(Vec::as_slice).unwrap_or_default()
    }

    /// The arguments of the runtime (last) stage's last `keyword` instruction.
    fn last(&self, keyword: &str) -> Option<String> {
        self.runtime().iter().rev().find(|(k, _)| k == keyword).map(|(_, args)| args.clone())
    }

    /// ENTRYPOINT or CMD, which must be in exec (JSON) form.
    fn exec_form(&self, keyword: &str) -> Vec<String> {
        let Some(args) = self.last(keyword) else { return Vec::new() };
        serde_json::from_str(&args).unwrap_or_else(|_| {
            panic!("{}: {keyword} must be in exec form (a JSON array), so SIGTERM reaches runvisor: {args}", self.name)
        })
    }

    /// The HEALTHCHECK's test as `[CMD, …]` or `[CMD-SHELL, script]`; None for none or NONE.
    fn healthcheck(&self) -> Option<Vec<String>> {
        let args = self.last("HEALTHCHECK")?;
        let mut rest = args.as_str();
        while rest.starts_with("--") {
            rest = rest.split_once(char::is_whitespace)?.1.trim_start();
        }
        let (_, command) = rest.split_once(char::is_whitespace).filter(|(f, _)| f.eq_ignore_ascii_case("CMD"))?;
        let exec_form = serde_json::from_str(command).map(|argv: Vec<String>| [vec!["CMD".into()], argv].concat());
        Some(exec_form.unwrap_or_else(|_| vec!["CMD-SHELL".into(), command.trim().into()]))
    }

    /// The runtime stage's RUNVISOR__ variables, from `ENV KEY=VALUE …` (values without spaces).
    fn env(&self) -> Vec<(String, String)> {
        let words = self.runtime().iter().filter(|(k, _)| k == "ENV").flat_map(|(_, a)| a.split_whitespace());
        let variables = words.filter_map(|w| w.split_once('=')).filter(|(key, _)| key.starts_with(ENV_PREFIX));
        variables.map(|(key, value)| (key.to_string(), value.trim_matches('"').to_string())).collect()
    }

    /// The repository file the runtime stage COPYs to `path` (to it, or into its directory).
    fn copied_to(&self, path: &str) -> Option<PathBuf> {
        let mut copies = self.runtime().iter().filter(|(k, args)| k == "COPY" && !args.contains("--from"));
        copies.find_map(|(_, args)| {
            let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
            let (destination, sources) = words.split_last()?;
            let into = |s: &&&str| format!("{}/{}", destination.trim_end_matches('/'), s.rsplit('/').next().unwrap());
            let exact = (*destination == path && sources.len() == 1).then(|| sources[0]);
            exact.or_else(|| sources.iter().find(|s| into(s) == path).copied()).map(|s| repo().join(s))
        })
    }
}
