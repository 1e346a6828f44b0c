//! Rendering of API objects as Heroku-style text (HEROKU-SPEC §1, §11).
//!
//! Every renderer is a pure function of the data and "now", so the layouts are unit-tested
//! without a server or a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use manifold_dyno::{is_one_off, is_web, RELEASE, RUN};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::api::{App, Build, Dyno, Formation, Host, Release};

/// Parses an API timestamp; `None` for null/garbage so callers can show the raw text.
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// `YYYY/MM/DD HH:MM:SS` in UTC, the layout the old Heroku CLI used in `ps`.
pub fn format_time(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year]/[month]/[day] [hour]:[minute]:[second]");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_else(|_| t.to_string())
}

/// `~ 3s ago`: s under 60 s, m under 60 min, h under 25 h, otherwise d (HEROKU-SPEC §1).
/// A clock skewed into the future shows as `0s` rather than a negative age.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    if s < 60 {
        format!("~ {s}s ago")
    } else if s < 60 * 60 {
        format!("~ {}m ago", s / 60)
    } else if s < 25 * 60 * 60 {
        format!("~ {}h ago", s / 3600)
    } else {
        format!("~ {}d ago", s / 86400)
    }
}

/// `2026/11/23 10:11:12 (~ 3s ago)`, or the raw string if it is not a timestamp.
pub fn when(s: &str, now: OffsetDateTime) -> String {
    match parse_time(s) {
        Some(t) => format!("{} ({})", format_time(t), age((now - t).whole_seconds())),
        None => s.to_string(),
    }
}

/// Columns separated by two spaces, padded to the widest cell; trailing spaces trimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(out, "{cell:<w$}");
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out += &line(widths.iter().map(|w| "-".repeat(*w)).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

pub fn apps(apps: &[App]) -> String {
    if apps.is_empty() {
        return "You have no apps.\n".to_string();
    }
    let mut sorted: Vec<&App> = apps.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.stack.name.clone(),
                version_or_none(a.current_release.as_ref().map(|r| r.version)),
                short_time(&a.created_at),
            ]
        })
        .collect();
    table(&["Name", "Stack", "Release", "Created"], &rows)
}

fn version_or_none(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_string(), |v| format!("v{v}"))
}

fn short_time(s: &str) -> String {
    parse_time(s).map_or_else(|| s.to_string(), format_time)
}

/// `=== APP` then `Key: value` lines, like `heroku apps:info`.
pub fn app_info(app: &App, dynos: &[Dyno], now: OffsetDateTime) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for d in dynos {
        *counts.entry(d.kind.as_str()).or_default() += 1;
    }
    let dynos = if counts.is_empty() {
        "none".to_string()
    } else {
        counts
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let released = app
        .released_at
        .as_deref()
        .map_or_else(|| "never".to_string(), |s| when(s, now));
    let pairs = vec![
        ("Created", when(&app.created_at, now)),
        (
            "Current release",
            version_or_none(app.current_release.as_ref().map(|r| r.version)),
        ),
        ("Released", released),
        ("Stack", app.stack.name.clone()),
        ("Dynos", dynos),
    ];
    let mut pairs = pairs;
    for (key, secs) in [
        ("Boot timeout", app.boot_timeout),
        ("Stop timeout", app.stop_timeout),
    ] {
        if let Some(s) = secs {
            pairs.push((key, format!("{s} s")));
        }
    }
    format!("=== {}\n{}", app.name, key_values(&pairs))
}

/// `Key:   value` with the values aligned one column after the longest key.
fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| {
            let key = format!("{k}:");
            if v.is_empty() {
                key + "\n"
            } else {
                format!("{key:<width$} {v}\n")
            }
        })
        .collect()
}

/// `=== APP Config Vars` then aligned `KEY: value` lines, sorted by key.
pub fn config(app: &str, vars: &BTreeMap<String, String>) -> String {
    if vars.is_empty() {
        return format!("{app} has no config vars.\n");
    }
    format!("=== {app} Config Vars\n{}", config_lines(vars))
}

/// The aligned `KEY: value` lines alone (also printed after `config:set`).
pub fn config_lines(vars: &BTreeMap<String, String>) -> String {
    let pairs: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    key_values(&pairs)
}

/// Process types sort alphabetically except that `web` comes first, as on Heroku.
fn type_order(a: &str, b: &str) -> std::cmp::Ordering {
    (!is_web(a), a).cmp(&(!is_web(b), b))
}

/// `web.10` sorts after `web.2`: compare the numeric suffix, then the full name.
fn dyno_index(name: &str) -> Option<u64> {
    name.rsplit_once('.').and_then(|(_, n)| n.parse().ok())
}

/// Where a dyno runs: `host-a 127.0.0.1:30001`, or just the host id without a port.
fn location(d: &Dyno) -> String {
    let Some(host) = &d.host else {
        return String::new();
    };
    // The host address may carry the agent's own port; the dyno's port replaces it.
    let ip = match host.address.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => host.address.clone(),
    };
    match (d.port, ip.is_empty()) {
        (Some(p), false) => format!("{} {ip}:{p}", host.id),
        _ => host.id.clone(),
    }
}

/// Dyno types that are not process types of the formation: one-off dynos of `run` and of
/// the release phase ([`is_one_off`]). `ps` lists them after the formation, one line
/// each, in this order.
pub const ONE_OFF_TYPES: [&str; 2] = [RUN, RELEASE];

fn by_index(group: &mut [&Dyno]) {
    group.sort_by(|a, b| (dyno_index(&a.name), &a.name).cmp(&(dyno_index(&b.name), &b.name)));
}

/// The `ps` layout of HEROKU-SPEC §1 plus where each dyno runs: the formation's groups, then
/// the one-off dynos as Heroku shows them,
/// `run.7364 (standard-1x): up 2026/11/23 10:00:00 (~ 1s ago): bash`.
pub fn ps(app: &str, dynos: &[Dyno], formation: &[Formation], now: OffsetDateTime) -> String {
    if dynos.is_empty() {
        return format!("No dynos on {app}\n");
    }
    let mut types: Vec<&str> = dynos
        .iter()
        .map(|d| d.kind.as_str())
        .filter(|k| !is_one_off(k))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    types.sort_by(|a, b| type_order(a, b));
    let mut sections = Vec::new();
    for kind in types {
        let mut group: Vec<&Dyno> = dynos.iter().filter(|d| d.kind == kind).collect();
        by_index(&mut group);
        let f = formation.iter().find(|f| f.kind == kind);
        let first = group.first().copied();
        let size = f
            .map(|f| f.size.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| first.map(|d| d.size.clone()))
            .unwrap_or_default();
        let command = f
            .map(|f| f.command.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| first.map(|d| d.command.clone()))
            .unwrap_or_default();
        let mut s = format!("=== {kind} ({size}): `{command}` ({})\n", group.len());
        for d in group {
            let mut line = format!("{}: {} {}", d.name, d.state, when(&d.updated_at, now));
            let loc = location(d);
            if !loc.is_empty() {
                line += "  ";
                line += &loc;
            }
            s += line.trim_end();
            s.push('\n');
        }
        sections.push(s);
    }
    for kind in ONE_OFF_TYPES {
        let mut group: Vec<&Dyno> = dynos.iter().filter(|d| d.kind == kind).collect();
        if group.is_empty() {
            continue;
        }
        by_index(&mut group);
        let mut s = format!("=== {kind}: one-off processes ({})\n", group.len());
        for d in group {
            let _ = writeln!(
                s,
                "{} ({}): {} {}: {}",
                d.name,
                d.size,
                d.state,
                when(&d.updated_at, now),
                d.command
            );
        }
        sections.push(s);
    }
    sections.join("\n")
}

/// `web=2:standard-1x worker=1:standard-1x`, what `ps:scale` without arguments shows.
pub fn formation(formation: &[Formation]) -> String {
    let mut sorted: Vec<&Formation> = formation.iter().collect();
    sorted.sort_by(|a, b| type_order(&a.kind, &b.kind));
    let parts: Vec<String> = sorted
        .iter()
        .map(|f| format!("{}={}:{}", f.kind, f.quantity, f.size))
        .collect();
    if parts.is_empty() {
        "No process types: deploy a Procfile first\n".to_string()
    } else {
        parts.join(" ") + "\n"
    }
}

/// Description with a marker for releases that did not (yet) succeed.
fn release_description(r: &Release) -> String {
    match r.status.as_str() {
        "" | "succeeded" => r.description.clone(),
        other => format!("{} ({other})", r.description),
    }
}

/// Newest first, `v3  Set FOO config vars  admin  2026/11/23 10:11:12 (~ 3m ago)`;
/// failed releases say so and the current one is marked.
pub fn releases(app: &str, releases: &[Release], now: OffsetDateTime) -> String {
    if releases.is_empty() {
        return format!("{app} has no releases.\n");
    }
    let mut sorted: Vec<&Release> = releases.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.version));
    let current = sorted.iter().find(|r| r.current).map(|r| r.version);
    let rows: Vec<[String; 5]> = sorted
        .iter()
        .map(|r| {
            [
                format!("v{}", r.version),
                release_description(r),
                r.user.email.clone(),
                when(&r.created_at, now),
                if r.current {
                    "(current)".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = match current {
        Some(v) => format!("=== {app} Releases - Current: v{v}\n"),
        None => format!("=== {app} Releases\n"),
    };
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line += "  ";
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out += line.trim_end();
        out.push('\n');
    }
    out
}

pub fn release_info(r: &Release, now: OffsetDateTime) -> String {
    let mut pairs = vec![
        ("By", r.user.email.clone()),
        ("Change", r.description.clone()),
        ("Status", r.status.clone()),
        ("Current", if r.current { "yes" } else { "no" }.to_string()),
        ("When", when(&r.created_at, now)),
    ];
    if let Some(slug) = &r.slug {
        pairs.push(("Slug", format!("{} ({})", slug.id, slug.checksum)));
    }
    let mut out = format!("=== Release v{}\n{}", r.version, key_values(&pairs));
    if let Some(slug) = r.slug.as_ref().filter(|s| !s.process_types.is_empty()) {
        out += &format!("\n=== v{} Process Types\n", r.version);
        let types: Vec<(&str, String)> = slug
            .process_types
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        out += &key_values(&types);
    }
    out
}

/// Newest first: id, status, release, created, user.
pub fn builds(app: &str, builds: &[Build]) -> String {
    if builds.is_empty() {
        return format!("{app} has no builds.\n");
    }
    let mut sorted: Vec<&Build> = builds.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |x: &Build| parse_time(&x.created_at);
        key(b).cmp(&key(a))
    });
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|b| {
            vec![
                b.id.clone(),
                b.status.clone(),
                b.release
                    .as_ref()
                    .map_or_else(String::new, |r| format!("v{}", r.version)),
                short_time(&b.created_at),
                b.user.email.clone(),
            ]
        })
        .collect();
    format!(
        "=== {app} Builds\n{}",
        table(&["Id", "Status", "Release", "Created", "User"], &rows)
    )
}

/// Bytes as MiB below 1 GiB, else GiB with one decimal: enough to compare hosts.
pub fn bytes(n: u64) -> String {
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    if n < GIB {
        format!("{}M", n / MIB)
    } else {
        format!("{:.1}G", n as f64 / GIB as f64)
    }
}

pub fn hosts(hosts: &[Host]) -> String {
    if hosts.is_empty() {
        return "No hosts have registered: start manifold-agent on a host\n".to_string();
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                h.address.clone(),
                h.state.clone(),
                h.dynos.to_string(),
                format!("{}/{}", bytes(h.memory_used), bytes(h.memory_bytes)),
                h.dyno_slots.to_string(),
                h.stacks.join(","),
            ]
        })
        .collect();
    table(
        &[
            "Id", "Address", "State", "Dynos", "Memory", "Slots", "Stacks",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-23 10:11:15 UTC);

    #[test]
    fn age_units() {
        assert_eq!(age(0), "~ 0s ago");
        assert_eq!(age(59), "~ 59s ago");
        assert_eq!(age(60), "~ 1m ago");
        assert_eq!(age(3599), "~ 59m ago");
        assert_eq!(age(3600), "~ 1h ago");
        assert_eq!(age(25 * 3600 - 1), "~ 24h ago");
        assert_eq!(age(25 * 3600), "~ 1d ago");
        assert_eq!(age(10 * 86400), "~ 10d ago");
        assert_eq!(age(-5), "~ 0s ago");
    }

    #[test]
    fn time_is_utc_slashes() {
        let t = parse_time("2026-11-23T11:11:12+01:00").expect("parse");
        assert_eq!(format_time(t), "2026/11/23 10:11:12");
        assert_eq!(
            when("2026-11-23T10:11:12Z", NOW),
            "2026/11/23 10:11:12 (~ 3s ago)"
        );
        assert_eq!(when("garbage", NOW), "garbage");
    }

    fn dynos() -> Vec<Dyno> {
        let v = json!([
            {"name": "worker.1", "type": "worker", "state": "up", "size": "standard-1x",
             "command": "python worker.py", "host": {"id": "host-a", "address": "127.0.0.1"},
             "port": null, "updated_at": "2026-11-23T10:11:13Z"},
            {"name": "web.10", "type": "web", "state": "up", "size": "standard-1x",
             "command": "python app.py", "host": {"id": "host-a", "address": "127.0.0.1:7070"},
             "port": 30010, "updated_at": "2026-11-23T09:11:12Z"},
            {"name": "web.2", "type": "web", "state": "starting", "size": "standard-1x",
             "command": "python app.py", "host": {"id": "host-b", "address": "127.0.0.1"},
             "port": 31000, "updated_at": "2026-11-23T10:11:12Z"},
            {"name": "web.1", "type": "web", "state": "up", "size": "standard-1x",
             "command": "python app.py", "host": {"id": "host-a", "address": "127.0.0.1"},
             "port": 30001, "updated_at": "2026-11-23T10:11:12Z"},
            {"name": "clock.1", "type": "clock", "state": "crashed", "size": "standard-2x",
             "command": "python clock.py", "host": null, "port": null,
             "updated_at": "2026-11-20T10:11:12Z"}
        ]);
        serde_json::from_value(v).expect("fixture")
    }

    #[test]
    fn ps_groups_sorts_and_ages() {
        let formation: Vec<Formation> = serde_json::from_value(json!([
            {"type": "web", "quantity": 3, "size": "standard-1x", "command": "gunicorn app"},
            {"type": "worker", "quantity": 1, "size": "standard-1x", "command": ""}
        ]))
        .expect("fixture");
        let out = ps("myapp", &dynos(), &formation, NOW);
        let expected = "\
=== web (standard-1x): `gunicorn app` (3)
web.1: up 2026/11/23 10:11:12 (~ 3s ago)  host-a 127.0.0.1:30001
web.2: starting 2026/11/23 10:11:12 (~ 3s ago)  host-b 127.0.0.1:31000
web.10: up 2026/11/23 09:11:12 (~ 1h ago)  host-a 127.0.0.1:30010

=== clock (standard-2x): `python clock.py` (1)
clock.1: crashed 2026/11/20 10:11:12 (~ 3d ago)

=== worker (standard-1x): `python worker.py` (1)
worker.1: up 2026/11/23 10:11:13 (~ 2s ago)  host-a
";
        assert_eq!(out, expected);
    }

    #[test]
    fn ps_lists_one_offs_after_the_formation() {
        let mut all = dynos();
        all.retain(|d| d.kind == "web" || d.kind == "worker");
        let extra: Vec<Dyno> = serde_json::from_value(json!([
            {"name": "run.7364", "type": "run", "state": "up", "size": "standard-1x",
             "command": "bash", "host": {"id": "host-a", "address": "127.0.0.1"}, "port": null,
             "updated_at": "2026-11-23T10:11:14Z"},
            {"name": "release.12", "type": "release", "state": "starting", "size": "standard-2x",
             "command": "python manage.py migrate", "host": null, "port": null,
             "updated_at": "2026-11-23T10:11:10Z"},
            {"name": "run.51", "type": "run", "state": "complete", "size": "performance-m",
             "command": "python -c 'print(1)'", "host": null, "port": null,
             "updated_at": "2026-11-23T10:10:15Z"}
        ]))
        .expect("fixture");
        all.extend(extra);
        let formation: Vec<Formation> = serde_json::from_value(json!([
            {"type": "web", "quantity": 3, "size": "standard-1x", "command": "gunicorn app"},
            {"type": "worker", "quantity": 1, "size": "standard-1x", "command": "python worker.py"}
        ]))
        .expect("fixture");
        let expected = "\
=== web (standard-1x): `gunicorn app` (3)
web.1: up 2026/11/23 10:11:12 (~ 3s ago)  host-a 127.0.0.1:30001
web.2: starting 2026/11/23 10:11:12 (~ 3s ago)  host-b 127.0.0.1:31000
web.10: up 2026/11/23 09:11:12 (~ 1h ago)  host-a 127.0.0.1:30010

=== worker (standard-1x): `python worker.py` (1)
worker.1: up 2026/11/23 10:11:13 (~ 2s ago)  host-a

=== run: one-off processes (2)
run.51 (performance-m): complete 2026/11/23 10:10:15 (~ 1m ago): python -c 'print(1)'
run.7364 (standard-1x): up 2026/11/23 10:11:14 (~ 1s ago): bash

=== release: one-off processes (1)
release.12 (standard-2x): starting 2026/11/23 10:11:10 (~ 5s ago): python manage.py migrate
";
        assert_eq!(ps("myapp", &all, &formation, NOW), expected);
    }

    #[test]
    fn ps_with_only_one_offs() {
        let d: Vec<Dyno> = serde_json::from_value(json!([
            {"name": "run.1", "type": "run", "state": "up", "size": "standard-1x",
             "command": "bash", "updated_at": "2026-11-23T10:11:14Z"}
        ]))
        .expect("fixture");
        assert_eq!(
            ps("myapp", &d, &[], NOW),
            "=== run: one-off processes (1)\nrun.1 (standard-1x): up 2026/11/23 10:11:14 (~ 1s ago): bash\n"
        );
    }

    #[test]
    fn ps_empty() {
        assert_eq!(ps("myapp", &[], &[], NOW), "No dynos on myapp\n");
    }

    #[test]
    fn formation_summary() {
        let f: Vec<Formation> = serde_json::from_value(json!([
            {"type": "worker", "quantity": 0, "size": "standard-1x"},
            {"type": "web", "quantity": 2, "size": "standard-2x"}
        ]))
        .expect("fixture");
        assert_eq!(formation(&f), "web=2:standard-2x worker=0:standard-1x\n");
    }

    #[test]
    fn releases_newest_first_marks_failed_and_current() {
        let rs: Vec<Release> = serde_json::from_value(json!([
            {"version": 1, "description": "Deploy 1a2b3c4d", "status": "succeeded",
             "current": false, "user": {"email": "admin"}, "created_at": "2026-11-23T10:01:15Z"},
            {"version": 2, "description": "Deploy 5e6f7a8b", "status": "failed",
             "current": false, "user": {"email": "alice"}, "created_at": "2026-11-23T10:05:15Z"},
            {"version": 3, "description": "Set FOO config vars", "status": "succeeded",
             "current": true, "user": {"email": "admin"}, "created_at": "2026-11-23T10:08:15Z"}
        ]))
        .expect("fixture");
        let expected = "\
=== myapp Releases - Current: v3
v3  Set FOO config vars       admin  2026/11/23 10:08:15 (~ 3m ago)   (current)
v2  Deploy 5e6f7a8b (failed)  alice  2026/11/23 10:05:15 (~ 6m ago)
v1  Deploy 1a2b3c4d           admin  2026/11/23 10:01:15 (~ 10m ago)
";
        assert_eq!(releases("myapp", &rs, NOW), expected);
        assert_eq!(releases("myapp", &[], NOW), "myapp has no releases.\n");
    }

    #[test]
    fn release_info_lists_process_types() {
        let r: Release = serde_json::from_value(json!({
            "version": 2, "description": "Deploy 1a2b3c4d", "status": "succeeded",
            "current": true, "user": {"email": "admin"}, "created_at": "2026-11-23T10:11:12Z",
            "slug": {"id": "s1", "checksum": "SHA256:ab", "process_types": {"web": "python app.py"}}
        }))
        .expect("fixture");
        let expected = "\
=== Release v2
By:      admin
Change:  Deploy 1a2b3c4d
Status:  succeeded
Current: yes
When:    2026/11/23 10:11:12 (~ 3s ago)
Slug:    s1 (SHA256:ab)

=== v2 Process Types
web: python app.py
";
        assert_eq!(release_info(&r, NOW), expected);
    }

    #[test]
    fn config_is_aligned_and_sorted() {
        let vars: BTreeMap<String, String> = [("ZED", "1"), ("A_LONG_KEY", "x y"), ("B", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let expected = "\
=== myapp Config Vars
A_LONG_KEY: x y
B:
ZED:        1
";
        assert_eq!(config("myapp", &vars), expected);
        assert_eq!(
            config("myapp", &BTreeMap::new()),
            "myapp has no config vars.\n"
        );
    }

    #[test]
    fn apps_table() {
        let apps: Vec<App> = serde_json::from_value(json!([
            {"name": "zeta", "stack": {"name": "bookworm"}, "created_at": "2026-11-23T10:11:12Z",
             "current_release": null},
            {"name": "alpha", "stack": {"name": "bookworm"}, "created_at": "2026-11-22T10:11:12Z",
             "current_release": {"version": 12}}
        ]))
        .expect("fixture");
        let expected = "\
Name   Stack     Release  Created
-----  --------  -------  -------------------
alpha  bookworm  v12      2026/11/22 10:11:12
zeta   bookworm  none     2026/11/23 10:11:12
";
        assert_eq!(super::apps(&apps), expected);
    }

    #[test]
    fn hosts_table() {
        let hosts: Vec<Host> = serde_json::from_value(json!([
            {"id": "host-a", "address": "10.0.0.1", "state": "ready", "memory_bytes": 8589934592u64,
             "memory_used": 536870912, "dyno_slots": 16, "dynos": 1, "stacks": ["bookworm", "noble"]}
        ]))
        .expect("fixture");
        let expected = "\
Id      Address   State  Dynos  Memory     Slots  Stacks
------  --------  -----  -----  ---------  -----  --------------
host-a  10.0.0.1  ready  1      512M/8.0G  16     bookworm,noble
";
        assert_eq!(super::hosts(&hosts), expected);
    }
}
