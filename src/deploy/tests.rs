//! The checked-in deployment files are the renderer's output, and every variable they set
//! is one the binary (or the engine, or the container runtime) reads, with a value it takes.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};

/// The files the repository ships, by target directory.
const COMPOSE_FILES: &[&str] =
    &["local-1", "local-2", "server-1", "server-4", "disagg-1p1d", "disagg-xpyd"];
const K8S_FILES: &[&str] = &["server-4", "disagg-1p1d", "disagg-xpyd"];

/// Variables the files set for others than Switchyard: who reads them.
const READ_ELSEWHERE: &[(&str, &str)] = &[
    ("HF_HOME", "the model loader (the Hugging Face cache)"),
    ("HUGGING_FACE_HUB_TOKEN", "engines that download gated models"),
    ("NVIDIA_VISIBLE_DEVICES", "the NVIDIA container runtime"),
    ("ETCD_ENDPOINTS", "switchyard, when SWITCHYARD_ETCD_ENDPOINTS is unset"),
    ("NATS_SERVER", "switchyard, when SWITCHYARD_NATS_URL is unset"),
];
/// Set by prefill/decode files for the worker-role flag that disaggregated serving adds;
/// a build without that flag runs such workers aggregated.
const ROLE_VAR: &str = "SWITCHYARD_WORKER_ROLE";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn shipped() -> Vec<PathBuf> {
    let dir = deploy_dir();
    let compose = COMPOSE_FILES.iter().map(|n| dir.join("compose").join(format!("{n}.yaml")));
    let k8s = K8S_FILES.iter().map(|n| dir.join("k8s").join(format!("{n}.yaml")));
    compose.chain(k8s).collect()
}

/// The command on a file's first line, as the CLI parses it.
fn command_of(text: &str, path: &Path) -> Cli {
    let first = text.lines().next().unwrap_or_default();
    let command = first
        .strip_prefix("# Rendered by `")
        .and_then(|rest| rest.strip_suffix("`."))
        .unwrap_or_else(|| panic!("{}: first line names no command: {first}", path.display()));
    Cli::try_parse_from(command.split_whitespace())
        .unwrap_or_else(|e| panic!("{}: {command}: {e}", path.display()))
}

fn render(cli: &Cli) -> String {
    let Command::Deploy(args) = &cli.command else { panic!("not a deploy command") };
    crate::cli::deploy::render(&args.target).unwrap()
}

#[test]
fn shipped_files_are_what_their_command_renders() {
    for path in shipped() {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (render it with its command)", path.display()));
        let fresh = render(&command_of(&text, &path));
        let first = text.lines().next().unwrap_or_default();
        assert!(
            fresh == text,
            "{} is out of date; render it again: {} > {}",
            path.display(),
            first.trim_start_matches("# Rendered by `").trim_end_matches("`."),
            path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&path).display()
        );
    }
}

/// Every `SWITCHYARD_` variable of the CLI, with the subcommands and long flag that read it.
fn cli_variables() -> BTreeMap<String, Vec<(String, String)>> {
    fn visit(cmd: &clap::Command, path: &str, out: &mut BTreeMap<String, Vec<(String, String)>>) {
        for arg in cmd.get_arguments() {
            if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                let env = env.to_string_lossy().into_owned();
                out.entry(env).or_default().push((path.to_owned(), long.to_owned()));
            }
        }
        for sub in cmd.get_subcommands() {
            visit(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }
    let mut out = BTreeMap::new();
    visit(&Cli::command(), "", &mut out);
    out
}

/// `(service command, variable, value)` of every variable a file sets (compose defaults
/// stand in for `${VAR:-default}`); the command is numbered by service (`2 worker`).
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut command = String::new();
    let mut services = 0;
    let mut in_env = false;
    let mut pending_name: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(c) =
            trimmed.strip_prefix("command: [\"").or_else(|| trimmed.strip_prefix("args: ["))
        {
            services += 1;
            command = format!("{services} {}", c.trim_end_matches(['"', ']']));
        }
        if trimmed == "environment:" || trimmed == "env:" {
            in_env = true;
            continue;
        }
        if !in_env {
            continue;
        }
        // compose: `NAME: "value"`; k8s: `- {name: NAME, value: "value"}` or `- name: NAME`
        if let Some(rest) = trimmed.strip_prefix("- {name: ") {
            let (name, value) = rest.split_once(", value: ").unwrap_or_default();
            out.push((command.clone(), name.to_owned(), unquote(value.trim_end_matches('}'))));
        } else if let Some(name) = trimmed.strip_prefix("- name: ") {
            pending_name = Some(name.to_owned());
        } else if trimmed.starts_with("valueFrom:") {
            if let Some(name) = pending_name.take() {
                out.push((command.clone(), name, String::new()));
            }
        } else if let Some((name, value)) = trimmed.split_once(": \"")
            && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            out.push((command.clone(), name.to_owned(), unquote(&format!("\"{value}"))));
        } else {
            in_env = false;
        }
    }
    out
}

/// A quoted value, with a compose `${VAR:-default}` replaced by its default.
fn unquote(value: &str) -> String {
    let value = value.trim().trim_matches('"');
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        Some(inner) => inner.split_once(":-").map(|(_, d)| d.to_owned()).unwrap_or_default(),
        None => value.to_owned(),
    }
}

#[test]
fn every_variable_set_is_read_and_every_value_parses() {
    let cli = cli_variables();
    for path in shipped() {
        let text = std::fs::read_to_string(&path).unwrap();
        let set = settings(&text);
        assert!(set.iter().any(|(_, n, _)| n == "SWITCHYARD_STORE"), "{}: {set:?}", path.display());
        // Each Switchyard service's variables, as flags of its subcommand.
        let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (service, name, value) in &set {
            let command = service.split_once(' ').map_or(service.as_str(), |(_, c)| c);
            if let Some(readers) = cli.get(name) {
                let Some((_, long)) =
                    readers.iter().find(|(p, _)| p.is_empty() || p == &format!(" {command}"))
                else {
                    panic!("{}: `switchyard {command}` does not read {name}", path.display());
                };
                if !value.is_empty() {
                    flags
                        .entry(service.clone())
                        .or_default()
                        .extend([format!("--{long}"), value.clone()]);
                }
            } else if name == ROLE_VAR {
                assert!(text.contains("prefill") || text.contains("decode"));
            } else {
                assert!(
                    READ_ELSEWHERE.iter().any(|(n, _)| n == name),
                    "{}: nothing reads {name}",
                    path.display()
                );
            }
        }
        for (service, args) in flags {
            let command = service.split_once(' ').map_or(service.as_str(), |(_, c)| c);
            let argv =
                ["switchyard".to_owned(), command.to_owned()].into_iter().chain(args.clone());
            if let Err(e) = Cli::try_parse_from(argv) {
                panic!("{}: `switchyard {command} {}`: {e}", path.display(), args.join(" "));
            }
        }
    }
}

#[test]
fn topologies_render_their_workers_and_bad_ones_are_refused() {
    let parse = |args: &str| {
        Cli::try_parse_from(format!("switchyard deploy {args}").split_whitespace()).unwrap()
    };
    let text = render(&parse("compose --topology 2p3d --gpus-per-worker 2"));
    for name in ["prefill-1", "prefill-2", "decode-1", "decode-3"] {
        assert!(text.contains(&format!("\n  {name}:\n")), "{name}");
    }
    assert!(!text.contains("decode-4:"));
    // GPUs are handed out in order, two per worker.
    assert!(text.contains("NVIDIA_VISIBLE_DEVICES: \"8,9\""), "{text}");
    let k8s = render(&parse("k8s --topology agg:3 --request-plane nats"));
    assert!(k8s.contains("replicas: 3") && k8s.contains("kind: StatefulSet"));
    for bad in [
        "compose --topology agg:0",
        "compose --topology agg:1,agg:2",
        "compose --topology 0p1d",
        "k8s --store file",
        "compose --store memory",
    ] {
        let Command::Deploy(args) = parse(bad).command else { unreachable!() };
        assert!(crate::cli::deploy::render(&args.target).is_err(), "{bad}");
    }
}
