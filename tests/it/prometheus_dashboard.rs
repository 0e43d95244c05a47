//! The Grafana dashboard (deploy/grafana/dashboards/hearth.json) against real data:
//! - every metric hearth exports is documented in docs/metrics.md (name, type, labels), and
//!   every metric, label and label value the dashboard's PromQL uses is exported;
//! - a real Prometheus, configured from deploy/prometheus/prometheus.yml, scrapes a hearth under
//!   load, and every PromQL expression of the dashboard returns data through its HTTP API;
//! - the alerting rules (deploy/prometheus/alerts.yml) pass promtool's unit tests
//!   (tests/prometheus/alerts_test.yml), name only exported metrics, and a real Prometheus
//!   evaluates them against a hearth under load without an error: the load's deliberate
//!   conflicting writes fire their alert, and nothing else fires;
//! - every PostgreSQL panel's SQL, with Grafana's macros expanded the way Grafana expands them,
//!   runs against the statistics a real hearth wrote to PostgreSQL and returns the right numbers.
//!
//! Prometheus: `$HEARTH_TEST_PROMETHEUS`, else `prometheus` on PATH (./scripts/test.sh installs
//! Debian's package when it is missing).
use crate::common;

use common::{
    compressible, eventually, incompressible, sccache_entry, start_server, start_server_with, stats_total, Db,
};
use serde_json::Value as Json;
use sqlx::{Column, Connection, Row, TypeInfo};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ------------------------------------------------------------------------------------------
// The dashboard's queries

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/dashboards/hearth.json")).expect("hearth.json is valid JSON")
}

/// The shipped alerting rules: (alert name, PromQL expression).
fn alert_rules() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).expect("alerts.yml is YAML");
    let groups = rules["groups"].as_sequence().expect("groups");
    let alerts: Vec<(String, String)> = groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .map(|r| {
            let name = r["alert"].as_str().expect("every rule is an alert").to_string();
            (name, r["expr"].as_str().expect("expr").to_string())
        })
        .collect();
    assert!(!alerts.is_empty(), "no alerts in alerts.yml");
    alerts
}

/// One query of one panel.
struct Query {
    panel: String,
    unit: String,
    /// Grafana's relative time range for the panel: its own `timeFrom`, else the dashboard's.
    time_from: String,
    target: Json,
}

impl Query {
    fn datasource(&self) -> &str {
        self.target["datasource"]["uid"].as_str().expect("datasource uid")
    }

    fn label(&self) -> String {
        format!("{} [{}]", self.panel, self.target["refId"].as_str().unwrap_or("?"))
    }
}

fn queries(dashboard: &Json) -> Vec<Query> {
    let default_from = dashboard["time"]["from"]
        .as_str()
        .expect("dashboard time range")
        .to_string();
    let mut panels: Vec<&Json> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    let mut out = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                panel: panel["title"].as_str().unwrap_or("?").to_string(),
                unit: panel["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                time_from: panel["timeFrom"]
                    .as_str()
                    .map_or(default_from.clone(), |f| format!("now-{f}")),
                target: target.clone(),
            });
        }
    }
    assert!(!out.is_empty(), "the dashboard has no queries");
    out
}

fn prometheus_queries(dashboard: &Json) -> Vec<(Query, String)> {
    queries(dashboard)
        .into_iter()
        .filter(|q| q.datasource() == "prometheus")
        .map(|q| {
            let expr = q.target["expr"].as_str().expect("expr").to_string();
            (q, expr)
        })
        .collect()
}

/// The PromQL Grafana sends: its variables replaced (`namespace` = the selection, formatted
/// as a regex the way Grafana formats a Prometheus variable; `.*` is the dashboard's "All").
fn promql_for(expr: &str, namespace: &str) -> String {
    let out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$__interval", "15s")
        .replace("${namespace}", namespace)
        .replace("$namespace", namespace);
    assert!(!out.contains('$'), "a Grafana variable this test does not know: {expr}");
    out
}

// ------------------------------------------------------------------------------------------
// PromQL: metric names, label matchers and grouping labels

#[derive(Default, Debug)]
struct PromqlRefs {
    metrics: BTreeSet<String>,
    /// (metric, label, operator, value)
    matchers: Vec<(String, String, String, String)>,
    grouping: BTreeSet<String>,
}

fn parse_promql(expr: &str) -> PromqlRefs {
    let chars: Vec<char> = expr.chars().collect();
    let mut refs = PromqlRefs::default();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_' || chars[*i] == ':') {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let string = |i: &mut usize| -> String {
        assert_eq!(chars[*i], '"', "a string literal in {expr}");
        *i += 1;
        let mut s = String::new();
        while chars[*i] != '"' {
            if chars[*i] == '\\' {
                *i += 1;
            }
            s.push(chars[*i]);
            *i += 1;
        }
        *i += 1;
        s
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            string(&mut i);
        } else if c.is_ascii_alphabetic() || c == '_' {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            if word.starts_with("hearth_") {
                refs.metrics.insert(word.clone());
                if j < chars.len() && chars[j] == '{' {
                    i = j + 1;
                    loop {
                        skip_ws(&mut i);
                        if chars[i] == '}' {
                            i += 1;
                            break;
                        }
                        let label = ident(&mut i);
                        skip_ws(&mut i);
                        let op: String = if chars[i] == '=' && chars[i + 1] == '~' {
                            "=~".into()
                        } else if chars[i] == '!' {
                            chars[i..i + 2].iter().collect()
                        } else {
                            "=".into()
                        };
                        i += op.len();
                        skip_ws(&mut i);
                        let value = string(&mut i);
                        refs.matchers.push((word.clone(), label, op, value));
                        skip_ws(&mut i);
                        if chars[i] == ',' {
                            i += 1;
                        }
                    }
                }
            } else if (word == "by" || word == "without") && j < chars.len() && chars[j] == '(' {
                i = j + 1;
                loop {
                    skip_ws(&mut i);
                    if chars[i] == ')' {
                        i += 1;
                        break;
                    }
                    refs.grouping.insert(ident(&mut i));
                    skip_ws(&mut i);
                    if chars[i] == ',' {
                        i += 1;
                    }
                }
            }
        } else if c.is_ascii_digit() {
            // numbers and durations (1e-9, 5m) are not identifiers
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '-') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    refs
}

#[test]
fn promql_parser_finds_metrics_matchers_and_grouping() {
    let refs = parse_promql(
        r#"histogram_quantile(0.99, sum by (operation, le) (rate(hearth_x_bucket{protocol="webdav", a=~"$n"}[1m]))) / clamp_min(hearth_y, 1e-9)"#,
    );
    assert_eq!(
        refs.metrics,
        BTreeSet::from(["hearth_x_bucket".into(), "hearth_y".into()])
    );
    assert_eq!(
        refs.matchers,
        vec![
            ("hearth_x_bucket".into(), "protocol".into(), "=".into(), "webdav".into()),
            ("hearth_x_bucket".into(), "a".into(), "=~".into(), "$n".into()),
        ]
    );
    assert_eq!(refs.grouping, BTreeSet::from(["operation".into(), "le".into()]));
}

// ------------------------------------------------------------------------------------------
// Prometheus's text format

/// A metric family as exported: type, label names (without `le`) and the values seen per label.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    labels: BTreeMap<String, BTreeSet<String>>,
}

fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            families.entry(name.to_string()).or_default().kind = kind.to_string();
        }
    }
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).expect("sample line");
        let name = &line[..end];
        let family = family_of(&families, name).unwrap_or_else(|| panic!("sample {name} without # TYPE"));
        let family = families.get_mut(&family).unwrap();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').expect("closing brace");
            let body = &line[end + 1..close];
            for pair in split_labels(body) {
                let (key, value) = pair;
                if key != "le" {
                    family.labels.entry(key).or_default().insert(value);
                }
            }
        }
    }
    families
}

/// `a="x",b="y"` → pairs (values unescaped).
fn split_labels(body: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .take_while(|&c| c != '=')
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'));
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().unwrap()),
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// The family a sample or a PromQL metric name belongs to (`_bucket`, `_sum`, `_count` of a
/// histogram).
fn family_of(families: &BTreeMap<String, Family>, name: &str) -> Option<String> {
    if families.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        let family = families.get(base)?;
        matches!(family.kind.as_str(), "histogram" | "summary").then(|| base.to_string())
    })
}

/// docs/metrics.md's tables: name → (type, labels).
fn documented_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    for line in read("docs/metrics.md").lines() {
        if !line.starts_with("| `hearth_") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_string();
        let kind = cells[2].to_string();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        assert!(
            out.insert(name.clone(), (kind, labels)).is_none(),
            "{name} documented twice"
        );
    }
    assert!(out.len() >= 10, "docs/metrics.md lists too few metrics: {out:?}");
    out
}

// ------------------------------------------------------------------------------------------
// Traffic

/// Drives a team's traffic against one hearth: misses, writes, hits, the same output under a
/// second key (dedup), a compressible object file (compression), conflicting overwrites,
/// PROPFIND/HEAD/MKCOL/OPTIONS, and a DELETE of a missing key.
#[derive(Clone)]
struct Load {
    client: reqwest::Client,
    base: String,
}

impl Load {
    fn new(t: &common::TestServer) -> Load {
        Load {
            client: t.client.clone(),
            base: t.base.clone(),
        }
    }

    async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>, expect: &[u16]) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.base));
        if method.as_str() == "PROPFIND" {
            request = request.header("Depth", "1");
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let _ = response.bytes().await;
        assert!(
            expect.contains(&status),
            "{method} {path} answered {status}, expected {expect:?}"
        );
    }

    async fn round(&self, ns: &str, i: u64) {
        let key = format!("/{ns}/obj{i}");
        let output = incompressible(2000 + (i as usize % 7) * 100, i);
        self.send("GET", &key, None, &[404]).await; // cold miss
        self.send("PUT", &key, Some(output.clone()), &[201]).await;
        self.send("GET", &key, None, &[200]).await;
        self.send("GET", &key, None, &[200]).await;
        self.send("HEAD", &key, None, &[200]).await;
        self.send("PUT", &format!("/{ns}/copy{i}"), Some(output), &[201]).await; // dedup
        self.send("PUT", &format!("/{ns}/obj{i}.o"), Some(compressible(16_000, i)), &[201])
            .await;
        if i.is_multiple_of(3) {
            // a non-deterministic build writes different bytes under the same key
            self.send("PUT", &key, Some(incompressible(1500, i + 1_000_000)), &[204])
                .await;
        }
        if i % 3 == 1 {
            // a deterministic sccache build writes the same members in another order
            let key = format!("/{ns}/entry{i}");
            let members = [("out.rlib", &b"rlib"[..]), ("stderr", &i.to_le_bytes()[..])];
            self.send("PUT", &key, Some(sccache_entry(&members)), &[201]).await;
            let reordered = [members[1], members[0]];
            self.send("PUT", &key, Some(sccache_entry(&reordered)), &[204]).await;
        }
        self.send("PROPFIND", &format!("/{ns}/"), None, &[207]).await;
        self.send("MKCOL", &format!("/{ns}/dir{i}/"), None, &[201]).await;
        self.send("OPTIONS", &format!("/{ns}/"), None, &[200, 204]).await;
        self.send("DELETE", &format!("/{ns}/absent{i}"), None, &[404]).await;
    }

    /// Rounds in two namespaces until `stop`; counts completed rounds in `rounds`.
    fn spawn(self, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for ns in ["alpha", "beta"] {
                    self.round(ns, i).await;
                }
                i += 1;
                rounds.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    }
}

// ------------------------------------------------------------------------------------------
// (a) documented and exported

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_metrics_are_documented_and_the_dashboard_uses_only_exported_ones() {
    let t = start_server(Db::Sqlite).await;
    let load = Load::new(&t);
    for i in 0..4 {
        load.round("alpha", i).await;
    }
    load.send("GET", "/healthz", None, &[200]).await;
    load.send("GET", "/readyz", None, &[200]).await;
    let text = t
        .client
        .get(t.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported = parse_exposition(&text);
    let hearth: BTreeMap<&String, &Family> = exported.iter().filter(|(n, _)| n.starts_with("hearth_")).collect();

    // Exported ⇔ documented, with the same type and labels.
    let documented = documented_metrics();
    let exported_names: BTreeSet<&String> = hearth.keys().copied().collect();
    let documented_names: BTreeSet<&String> = documented.keys().collect();
    let undocumented: Vec<_> = exported_names.difference(&documented_names).collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/metrics.md: {undocumented:?}"
    );
    let stale: Vec<_> = documented_names.difference(&exported_names).collect();
    assert!(stale.is_empty(), "in docs/metrics.md but not exported: {stale:?}");
    for (name, family) in &hearth {
        let (kind, labels) = &documented[*name];
        assert_eq!(&family.kind, kind, "{name}: documented type");
        let exported_labels: BTreeSet<String> = family.labels.keys().cloned().collect();
        assert_eq!(&exported_labels, labels, "{name}: documented labels");
    }

    // Everything the dashboard's PromQL names exists: metrics, label names, label values.
    let d = dashboard();
    let mut expressions: Vec<(String, String)> = prometheus_queries(&d)
        .into_iter()
        .map(|(q, expr)| (q.label(), expr))
        .collect();
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if var["datasource"]["uid"] == "prometheus" {
            let definition = var["definition"].as_str().expect("variable definition");
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable {definition}: only label_values(metric, label) is checked"));
            let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
            let family = &exported[metric.trim()];
            assert!(family.labels.contains_key(label.trim()), "{definition}: no such label");
            expressions.push((format!("variable {}", var["name"]), metric.trim().to_string()));
        }
    }
    // Alerts too; they may group by the labels Prometheus attaches to every scraped series.
    let alerts: Vec<(String, String)> = alert_rules()
        .into_iter()
        .filter(|(_, expr)| expr.contains("hearth_"))
        .map(|(name, expr)| (format!("alert {name}"), expr))
        .collect();
    assert!(alerts.len() >= 5, "alerts on hearth's own metrics: {alerts:?}");
    let alert_labels = alerts.iter().map(|(label, _)| label.clone()).collect::<BTreeSet<_>>();
    expressions.extend(alerts);
    let mut problems = Vec::new();
    for (label, expr) in &expressions {
        let refs = parse_promql(expr);
        assert!(!refs.metrics.is_empty(), "{label}: no hearth metric in {expr}");
        let mut labels_in_expr: BTreeSet<String> = BTreeSet::from(["le".to_string()]);
        if alert_labels.contains(label) {
            labels_in_expr.extend(["instance".to_string(), "job".to_string()]);
        }
        for metric in &refs.metrics {
            match family_of(&exported, metric) {
                Some(family) => labels_in_expr.extend(exported[&family].labels.keys().cloned()),
                None => problems.push(format!("{label}: {metric} is not exported")),
            }
        }
        for (metric, name, op, value) in &refs.matchers {
            let Some(family) = family_of(&exported, metric) else {
                continue;
            };
            let is_bucket = metric.ends_with("_bucket");
            match exported[&family].labels.get(name) {
                None if is_bucket && name == "le" => {}
                None => problems.push(format!("{label}: {metric} has no label {name}")),
                Some(values) if op == "=" && !values.contains(value) => problems.push(format!(
                    "{label}: {metric}{{{name}=\"{value}\"}} is never exported ({values:?})"
                )),
                Some(_) => {}
            }
        }
        for name in refs.grouping.difference(&labels_in_expr) {
            problems.push(format!("{label}: groups by {name}, which none of its metrics carries"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    t.stop().await;
}

// ------------------------------------------------------------------------------------------
// (b) real Prometheus

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTH_TEST_PROMETHEUS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    find_on_path("prometheus").unwrap_or_else(|| {
        panic!(
            "Prometheus is required: set HEARTH_TEST_PROMETHEUS or put `prometheus` on PATH; \
             ./scripts/test.sh installs Debian's package"
        )
    })
}

/// A Prometheus process on a free loopback port, killed on drop.
struct Prometheus {
    child: std::process::Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/prometheus/prometheus.yml with the hearth job's target replaced by `target` and
/// every interval shortened to 1 s; the job name and metrics path stay as shipped.
fn test_prometheus_config(target: &str) -> serde_yaml::Value {
    use serde_yaml::Value;
    let mut config: Value = serde_yaml::from_str(&read("deploy/prometheus/prometheus.yml")).expect("YAML");
    for key in ["scrape_interval", "scrape_timeout", "evaluation_interval"] {
        config["global"][key] = Value::from("1s");
    }
    let jobs = config["scrape_configs"].as_sequence_mut().expect("scrape_configs");
    jobs.retain(|j| j["job_name"].as_str() == Some("hearth"));
    assert_eq!(jobs.len(), 1, "one scrape job named hearth");
    let job = &mut jobs[0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    for key in ["scrape_interval", "scrape_timeout"] {
        if let Some(map) = job.as_mapping_mut() {
            map.remove(key);
        }
    }
    let mut static_config = serde_yaml::Mapping::new();
    static_config.insert("targets".into(), Value::Sequence(vec![Value::from(target)]));
    job["static_configs"] = Value::Sequence(vec![Value::Mapping(static_config)]);
    // Rule files are named relative to the shipped config; the test's config lives elsewhere.
    let rule_files = config["rule_files"].as_sequence_mut().expect("rule_files");
    assert!(!rule_files.is_empty(), "the shipped config loads the alerting rules");
    for file in rule_files.iter_mut() {
        let path = repo()
            .join("deploy/prometheus")
            .join(file.as_str().expect("a rule file path"));
        assert!(path.is_file(), "{} is missing", path.display());
        *file = Value::from(path.display().to_string());
    }
    config
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(
            &config_path,
            serde_yaml::to_string(&test_prometheus_config(target)).unwrap(),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = std::process::Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", prometheus_binary().display()));
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Prometheus exited ({status}):\n{}", self.log());
            }
            if let Ok(r) = client.get(format!("{}/-/ready", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "Prometheus is not ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET on the HTTP API; the `data` of a successful answer.
    async fn api(&self, client: &reqwest::Client, path: &str, params: &[(&str, &str)]) -> Result<Json, String> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base)).unwrap();
        url.query_pairs_mut().extend_pairs(params);
        let response = client.get(url).send().await.map_err(|e| e.to_string())?;
        let body: Json = serde_json::from_str(&response.text().await.map_err(|e| e.to_string())?)
            .map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        Ok(body["data"].clone())
    }

    async fn query(&self, client: &reqwest::Client, promql: &str) -> Result<Vec<Json>, String> {
        let data = self.api(client, "/api/v1/query", &[("query", promql)]).await?;
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") => Ok(vec![serde_json::json!({"metric": {}, "value": data["result"]})]),
            other => Err(format!("unexpected result type {other:?}")),
        }
    }
}

/// The shipped alerts as a real Prometheus runs them against a hearth under the test's load:
/// each loaded and evaluated at least twice without an error; the load's deliberate
/// non-deterministic rewrites (a third of its rounds) make `HearthConflictingWrites` fire,
/// and nothing else is pending or firing.
async fn alerting_rule_problems(prometheus: &Prometheus, client: &reqwest::Client) -> Vec<String> {
    const EXPECTED_FIRING: &str = "HearthConflictingWrites";
    let shipped: BTreeSet<String> = alert_rules().into_iter().map(|(name, _)| name).collect();
    let started = Instant::now();
    let mut evaluations: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    loop {
        let data = match prometheus.api(client, "/api/v1/rules", &[("type", "alert")]).await {
            Ok(data) => data,
            Err(e) => return vec![format!("/api/v1/rules: {e}")],
        };
        let rules: Vec<Json> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let loaded: BTreeSet<String> = rules
            .iter()
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        if loaded != shipped {
            return vec![format!(
                "Prometheus loaded the alerts {loaded:?}, alerts.yml has {shipped:?}"
            )];
        }
        for rule in &rules {
            if let (Some(name), Some(at)) = (rule["name"].as_str(), rule["lastEvaluation"].as_str()) {
                if !at.starts_with("0001-") {
                    evaluations.entry(name.to_string()).or_default().insert(at.to_string());
                }
            }
        }
        let problems: Vec<String> = rules
            .iter()
            .filter_map(|rule| {
                let expected = if rule["name"] == EXPECTED_FIRING {
                    "firing"
                } else {
                    "inactive"
                };
                (rule["health"] != "ok" || rule["state"] != expected).then(|| {
                    format!(
                        "alert {}: expected {expected}, health {}, state {}, error {}, alerts {}",
                        rule["name"], rule["health"], rule["state"], rule["lastError"], rule["alerts"]
                    )
                })
            })
            .collect();
        let evaluated_twice = shipped
            .iter()
            .all(|n| evaluations.get(n).is_some_and(|at| at.len() >= 2));
        if evaluated_twice && problems.is_empty() {
            return problems;
        }
        if started.elapsed() > Duration::from_secs(20) {
            return if evaluated_twice {
                problems
            } else {
                vec![format!("alerts not evaluated twice within 20 s: {evaluations:?}")]
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sample_value(series: &Json) -> f64 {
    let text = series["value"][1].as_str().expect("[time, \"value\"]");
    match text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        t => t.parse().unwrap_or_else(|_| panic!("value {t}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let binary = prometheus_binary(); // fail fast, before starting anything
    let started = Instant::now();
    let t = start_server(Db::Sqlite).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    // Traffic first, so that Prometheus's first scrape already sees stored entries (storage
    // gauges are measured at scrape time, at most every 15 s).
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let load = Load::new(&t).spawn(stop.clone(), rounds.clone());
    assert!(
        eventually(10, || async { rounds.load(Ordering::Relaxed) >= 3 }).await,
        "the load does not progress"
    );

    let target = t.base.trim_start_matches("http://").to_string();
    let mut prometheus = Prometheus::start(&target);
    prometheus.wait_ready(&client).await;
    let prometheus_started = Instant::now();

    // Scraped: the target is up and has been scraped at least 5 times.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let targets = prometheus.api(&client, "/api/v1/targets", &[]).await.unwrap();
        let up = targets["activeTargets"].as_array().into_iter().flatten().any(|t| {
            t["labels"]["job"] == "hearth"
                && t["health"] == "up"
                && t["scrapeUrl"] == format!("http://{target}/metrics")
        });
        let scrapes = prometheus
            .query(&client, "count_over_time(up{job=\"hearth\"}[1m])")
            .await
            .unwrap()
            .first()
            .map_or(0.0, sample_value);
        if up && scrapes >= 5.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape hearth (up: {up}, scrapes: {scrapes}): {targets}\n{}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The namespace variable lists the namespaces.
    let values = prometheus
        .api(
            &client,
            "/api/v1/label/namespace/values",
            &[("match[]", "hearth_cache_hits_total")],
        )
        .await
        .unwrap();
    for ns in ["alpha", "beta"] {
        assert!(
            values.as_array().unwrap().iter().any(|v| v == ns),
            "{ns} not in {values}"
        );
    }

    // Every expression, with "All" and with one namespace selected.
    let mut failures = Vec::new();
    let queries = prometheus_queries(&dashboard());
    for (q, expr) in &queries {
        for namespace in [".*", "alpha"] {
            if namespace != ".*" && !expr.contains("$namespace") {
                continue;
            }
            let promql = promql_for(expr, namespace);
            let series = match prometheus.query(&client, &promql).await {
                Ok(series) => series,
                Err(e) => {
                    failures.push(format!("{}: {e}\n    {promql}", q.label()));
                    continue;
                }
            };
            let values: Vec<f64> = series.iter().map(sample_value).collect();
            if !values.iter().any(|v| v.is_finite()) {
                failures.push(format!("{}: no data ({series:?})\n    {promql}", q.label()));
            }
            if q.unit == "percentunit" && values.iter().any(|v| v.is_finite() && !(0.0..=1.0).contains(v)) {
                failures.push(format!(
                    "{}: a ratio outside [0, 1]: {values:?}\n    {promql}",
                    q.label()
                ));
            }
            if namespace == "alpha" {
                for s in &series {
                    if let Some(ns) = s["metric"]["namespace"].as_str() {
                        if ns != "alpha" {
                            failures.push(format!("{}: selecting alpha shows {ns}\n    {promql}", q.label()));
                        }
                    }
                }
            }
        }
    }
    failures.extend(alerting_rule_problems(&prometheus, &client).await);
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load ran without surprises");
    let prometheus_seconds = prometheus_started.elapsed().as_secs_f64();
    drop(prometheus);
    assert!(
        failures.is_empty(),
        "{} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} dashboard queries checked against {}: Prometheus ran {prometheus_seconds:.1} s, \
         {} load rounds, {:.1} s in all",
        queries.len(),
        binary.display(),
        rounds.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    t.stop().await;
}

/// promtool, shipped with Prometheus: next to the binary the tests use, else on PATH.
fn promtool() -> PathBuf {
    let binary = prometheus_binary();
    binary
        .parent()
        .map(|dir| dir.join("promtool"))
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("promtool"))
        .unwrap_or_else(|| {
            panic!(
                "promtool (shipped with Prometheus) not found next to {}",
                binary.display()
            )
        })
}

/// Runs `promtool <command…> <file>` and fails the test with promtool's output unless it succeeds.
fn assert_promtool_accepts(command: &[&str], file: &std::path::Path) {
    let output = std::process::Command::new(promtool())
        .args(command)
        .arg(file)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {} {}:\n{}{}",
        command.join(" "),
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn shipped_alerting_rules_pass_their_promtool_unit_tests() {
    assert_promtool_accepts(&["test", "rules"], &repo().join("tests/prometheus/alerts_test.yml"));
    // Every shipped alert has a test case.
    let tests = read("tests/prometheus/alerts_test.yml");
    for (name, _) in alert_rules() {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no case in tests/prometheus/alerts_test.yml"
        );
    }
}

#[test]
fn shipped_prometheus_config_passes_promtool() {
    let scratch = tempfile::tempdir().unwrap();
    for config in [
        repo().join("deploy/prometheus/prometheus.yml"),
        write_temp_config(scratch.path(), &test_prometheus_config("127.0.0.1:8080")),
    ] {
        assert_promtool_accepts(&["check", "config"], &config);
    }
}

fn write_temp_config(dir: &std::path::Path, config: &serde_yaml::Value) -> PathBuf {
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, serde_yaml::to_string(config).unwrap()).unwrap();
    path
}

// ------------------------------------------------------------------------------------------
// (c) PostgreSQL panels

/// Seconds in a Grafana duration such as `30d`, `6h`, `1d`.
fn seconds(duration: &str) -> i64 {
    let duration = duration.trim().trim_matches('\'');
    let (number, unit) = duration.split_at(duration.len() - 1);
    let n: i64 = number.parse().unwrap_or_else(|_| panic!("duration {duration}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => panic!("duration unit in {duration}"),
    }
}

/// The SQL Grafana's PostgreSQL data source runs: dashboard variables interpolated (the
/// `:regex` format; "All" is the variable's custom all value `.*`, inserted as is), then the
/// macros expanded as pkg/tsdb/grafana-postgresql-datasource/macros.go does.
fn grafana_sql(sql: &str, from: i64, to: i64, namespace_regex: &str) -> String {
    let sql = sql.replace("${namespace:regex}", namespace_regex);
    let mut out = String::new();
    let mut rest = sql.as_str();
    while let Some(i) = rest.find("$__") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let open = after
            .find('(')
            .unwrap_or_else(|| panic!("macro without arguments: {after}"));
        let close = after.find(')').expect("closing parenthesis");
        let name = &after[..open];
        let args: Vec<&str> = after[open + 1..close].split(',').map(str::trim).collect();
        out.push_str(&match name {
            "__unixEpochFilter" => format!("{c} >= {from} AND {c} <= {to}", c = args[0]),
            "__unixEpochFrom" => from.to_string(),
            "__unixEpochTo" => to.to_string(),
            "__unixEpochGroup" => format!("floor(({})/{s})*{s}", args[0], s = seconds(args[1])),
            "__unixEpochGroupAlias" => format!("floor(({})/{s})*{s} AS \"time\"", args[0], s = seconds(args[1])),
            other => panic!("Grafana macro ${other}: teach this test how Grafana expands it"),
        });
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    let unknown = out
        .match_indices('$')
        .any(|(i, _)| out[i + 1..].starts_with(|c: char| c == '{' || c == '_' || c.is_ascii_alphabetic()));
    assert!(!unknown, "a Grafana variable this test does not know: {out}");
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Num(f64),
    Text(String),
}

impl Cell {
    fn num(&self) -> f64 {
        match self {
            Cell::Num(n) => *n,
            other => panic!("expected a number, got {other:?}"),
        }
    }
}

/// Column names and rows, every value decoded by its PostgreSQL type.
async fn run_sql(conn: &mut sqlx::PgConnection, sql: &str) -> (Vec<String>, Vec<Vec<Cell>>) {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL rejects the panel's SQL: {e}\n{sql}"));
    let Some(first) = rows.first() else {
        return (vec![], vec![]);
    };
    let columns: Vec<String> = first.columns().iter().map(|c| c.name().to_string()).collect();
    let decoded = rows
        .iter()
        .map(|row| {
            row.columns()
                .iter()
                .enumerate()
                .map(|(i, column)| {
                    let cell = match column.type_info().name() {
                        "INT8" => row.get::<Option<i64>, _>(i).map(|v| Cell::Num(v as f64)),
                        "INT4" => row.get::<Option<i32>, _>(i).map(|v| Cell::Num(v as f64)),
                        "FLOAT8" => row.get::<Option<f64>, _>(i).map(Cell::Num),
                        "TEXT" | "VARCHAR" => row.get::<Option<String>, _>(i).map(Cell::Text),
                        other => panic!(
                            "column {} has type {other}: cast it to bigint, float8 or text so that every \
                             Grafana version reads it the same way\n{sql}",
                            column.name()
                        ),
                    };
                    cell.unwrap_or(Cell::Null)
                })
                .collect()
        })
        .collect();
    (columns, decoded)
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Runs every PostgreSQL panel's query for one namespace selection; checks the shape Grafana
/// needs and returns the results by panel title.
async fn run_postgres_panels(
    conn: &mut sqlx::PgConnection,
    namespace_regex: &str,
) -> BTreeMap<String, (Vec<String>, Vec<Vec<Cell>>)> {
    let mut results = BTreeMap::new();
    for q in queries(&dashboard())
        .into_iter()
        .filter(|q| q.datasource() == "hearth-postgres")
    {
        let to = now();
        let from = to - seconds(q.time_from.strip_prefix("now-").expect("relative time range"));
        let raw = q.target["rawSql"].as_str().expect("rawSql");
        let sql = grafana_sql(raw, from, to, namespace_regex);
        let (columns, rows) = run_sql(conn, &sql).await;
        let label = q.label();
        assert!(!rows.is_empty(), "{label}: no rows\n{sql}");
        let distinct: BTreeSet<&String> = columns.iter().collect();
        assert_eq!(
            distinct.len(),
            columns.len(),
            "{label}: duplicate column names {columns:?}"
        );
        match q.target["format"].as_str().unwrap() {
            "time_series" => {
                let time = columns
                    .iter()
                    .position(|c| c == "time")
                    .unwrap_or_else(|| panic!("{label}: no time column in {columns:?}"));
                let times: Vec<f64> = rows.iter().map(|r| r[time].num()).collect();
                assert!(times.windows(2).all(|w| w[0] <= w[1]), "{label}: not sorted by time");
                for t in &times {
                    assert!(
                        *t >= (from - 86_400) as f64 && *t <= to as f64,
                        "{label}: time {t} outside the range"
                    );
                }
                let values = columns
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| *i != time && *c != "metric")
                    .count();
                assert!(values >= 1, "{label}: no value column");
                for row in &rows {
                    for (i, cell) in row.iter().enumerate() {
                        if columns[i] == "metric" {
                            assert!(matches!(cell, Cell::Text(_)), "{label}: metric {cell:?}");
                        } else {
                            assert!(matches!(cell, Cell::Num(_) | Cell::Null), "{label}: {cell:?}");
                        }
                    }
                }
            }
            "table" => assert!(columns.len() >= 2, "{label}: {columns:?}"),
            other => panic!("{label}: format {other}"),
        }
        if q.unit == "percentunit" {
            for row in &rows {
                for (i, cell) in row.iter().enumerate() {
                    if let (Cell::Num(v), false) = (cell, columns[i] == "time") {
                        assert!((0.0..=1.0).contains(v), "{label}: ratio {v}");
                    }
                }
            }
        }
        results.insert(q.panel.clone(), (columns, rows));
    }
    results
}

/// Rows as maps column → cell.
fn records(result: &(Vec<String>, Vec<Vec<Cell>>)) -> Vec<BTreeMap<String, Cell>> {
    let (columns, rows) = result;
    rows.iter()
        .map(|row| columns.iter().cloned().zip(row.iter().cloned()).collect())
        .collect()
}

fn panel<'a>(
    results: &'a BTreeMap<String, (Vec<String>, Vec<Vec<Cell>>)>,
    title: &str,
) -> &'a (Vec<String>, Vec<Vec<Cell>>) {
    results
        .get(title)
        .unwrap_or_else(|| panic!("no PostgreSQL panel {title:?}: {:?}", results.keys()))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_panels_show_the_statistics_hearth_wrote() {
    let t = start_server_with(Db::Postgres, |c| c.stats_flush_interval = Duration::from_millis(200)).await;
    let load = Load::new(&t);
    // alpha: 2 writes, 3 hits, 1 miss.
    load.send("PUT", "/alpha/k1", Some(incompressible(1000, 1)), &[201])
        .await;
    load.send("PUT", "/alpha/k2", Some(incompressible(1000, 2)), &[201])
        .await;
    for _ in 0..3 {
        load.send("GET", "/alpha/k1", None, &[200]).await;
    }
    load.send("GET", "/alpha/nope", None, &[404]).await;
    // beta: 2 misses, then a write, a hit, and a conflicting overwrite.
    load.send("GET", "/beta/m1", None, &[404]).await;
    load.send("GET", "/beta/m2", None, &[404]).await;
    load.send("PUT", "/beta/x", Some(incompressible(500, 3)), &[201]).await;
    load.send("GET", "/beta/x", None, &[200]).await;
    load.send("PUT", "/beta/x", Some(incompressible(700, 4)), &[204]).await;
    assert!(
        eventually(10, || async {
            let (a, b) = (
                stats_total(t.meta(), "alpha").await,
                stats_total(t.meta(), "beta").await,
            );
            (
                a.hits,
                a.misses,
                a.writes,
                b.hits,
                b.misses,
                b.writes,
                b.conflicting_writes,
            ) == (3, 1, 2, 1, 2, 2, 1)
        })
        .await,
        "statistics not flushed: alpha {:?}, beta {:?}",
        stats_total(t.meta(), "alpha").await,
        stats_total(t.meta(), "beta").await
    );

    let mut conn = sqlx::PgConnection::connect(&t.db.url).await.expect("connect");

    // "All" namespaces.
    let all = run_postgres_panels(&mut conn, ".*").await;
    let per_day = records(panel(&all, "Hit rate per namespace per day"));
    let rate = |ns: &str| -> f64 {
        per_day
            .iter()
            .find(|r| r["metric"] == Cell::Text(ns.into()))
            .unwrap_or_else(|| panic!("no {ns} in {per_day:?}"))["hit_rate"]
            .num()
    };
    assert!(close(rate("alpha"), 0.75), "{per_day:?}");
    assert!(close(rate("beta"), 1.0 / 3.0), "{per_day:?}");

    let lookups = records(panel(&all, "Lookups per day"));
    let total = |column: &str| lookups.iter().map(|r| r[column].num()).sum::<f64>();
    assert_eq!(
        (total("hits"), total("cold_misses"), total("evicted_misses")),
        (4.0, 3.0, 0.0)
    );

    let top = records(panel(&all, "Top namespaces by misses"));
    let order: Vec<&Cell> = top.iter().map(|r| &r["namespace"]).collect();
    assert_eq!(
        order,
        [&Cell::Text("beta".into()), &Cell::Text("alpha".into())],
        "most misses first"
    );
    assert_eq!(top[0]["misses"], Cell::Num(2.0));
    assert_eq!(top[0]["cold_misses"], Cell::Num(2.0));
    assert!(close(top[0]["hit_rate"].num(), 1.0 / 3.0));
    assert!(close(top[1]["hit_rate"].num(), 0.75));

    let writers = records(panel(&all, "Writes by token"));
    assert_eq!(writers.len(), 1, "{writers:?}");
    assert_eq!(writers[0]["token"], Cell::Text("(anonymous)".into()));
    assert_eq!(writers[0]["writes"], Cell::Num(4.0));
    assert_eq!(writers[0]["conflicting_writes"], Cell::Num(1.0));
    assert_eq!(writers[0]["bytes_received"], Cell::Num(1000.0 + 1000.0 + 500.0 + 700.0));

    // One namespace selected (Grafana's regex format of a single value).
    let alpha = run_postgres_panels(&mut conn, "alpha").await;
    let top = records(panel(&alpha, "Top namespaces by misses"));
    assert_eq!(top.len(), 1);
    assert_eq!(top[0]["namespace"], Cell::Text("alpha".into()));
    let lookups = records(panel(&alpha, "Lookups per day"));
    assert_eq!(lookups.iter().map(|r| r["hits"].num()).sum::<f64>(), 3.0);
    let per_day = records(panel(&alpha, "Hit rate per namespace per day"));
    assert!(
        per_day.iter().all(|r| r["metric"] == Cell::Text("alpha".into())),
        "{per_day:?}"
    );

    conn.close().await.ok();
    t.stop().await;
}

#[test]
fn grafana_sql_expansion_matches_grafana() {
    let sql = "SELECT $__unixEpochGroupAlias(hour, 1d), x FROM t WHERE $__unixEpochFilter(hour) AND \
               namespace ~ '^${namespace:regex}$' AND hour < $__unixEpochTo()";
    assert_eq!(
        grafana_sql(sql, 100, 200, ".*"),
        "SELECT floor((hour)/86400)*86400 AS \"time\", x FROM t WHERE hour >= 100 AND hour <= 200 AND \
         namespace ~ '^.*$' AND hour < 200"
    );
}
