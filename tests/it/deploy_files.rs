//! The deployment files agree with each other and with the code: docker-compose.yml, the
//! Dockerfile, Prometheus's scrape configuration, Grafana's provisioning and the dashboard.
//! No container engine is needed: the files are parsed and cross-checked, and Debian's
//! `docker-compose` (which validates a compose file without an engine) checks the compose file.
//! tests/prometheus_dashboard.rs runs the same Prometheus configuration and dashboard queries
//! against a real hearth and a real Prometheus.

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SERVICES: &[&str] = &["hearth", "postgres", "prometheus", "grafana"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(relative: &str) -> Yaml {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/grafana/dashboards/hearth.json")).expect("hearth.json is valid JSON")
}

fn string(value: &Yaml) -> String {
    match value {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// Compose's variable substitution with every variable unset: `${VAR:-default}` and
/// `${VAR-default}` give the default, `${VAR}` and `$VAR` nothing, `$$` a literal `$`. The test
/// checks the defaults a plain `docker compose up` runs with.
fn substitute(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').unwrap_or_else(|| panic!("unterminated ${{ in {text:?}"));
            let inner = &tail[..end];
            if let Some((_, default)) = inner.split_once(":-").or_else(|| inner.split_once('-')) {
                out.push_str(default);
            } else {
                assert!(
                    !inner.contains('?'),
                    "{text:?}: a required variable makes `docker compose up` fail without a .env file"
                );
            }
            rest = &tail[end + 1..];
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    out
}

/// One compose service, with variables substituted.
struct Service {
    name: String,
    def: Yaml,
}

impl Service {
    fn get(&self, key: &str) -> Option<&Yaml> {
        self.def.get(key)
    }

    fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        match self.get("environment") {
            None => {}
            Some(Yaml::Mapping(m)) => {
                for (k, v) in m {
                    env.insert(string(k), substitute(&string(v)));
                }
            }
            Some(Yaml::Sequence(items)) => {
                for item in items {
                    let item = string(item);
                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                    env.insert(k.to_string(), substitute(v));
                }
            }
            Some(other) => panic!("{}: unexpected environment {other:?}", self.name),
        }
        env
    }

    fn env_var(&self, key: &str) -> String {
        self.env()
            .remove(key)
            .unwrap_or_else(|| panic!("service {} does not set {key}", self.name))
    }

    /// `(source, target)` of every volume, short or long syntax.
    fn volumes(&self) -> Vec<(String, String)> {
        let Some(list) = self.get("volumes") else { return vec![] };
        list.as_sequence()
            .unwrap_or_else(|| panic!("{}: volumes is not a list", self.name))
            .iter()
            .map(|v| match v {
                Yaml::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    assert!(parts.len() >= 2, "{}: volume {s:?} has no target", self.name);
                    (substitute(parts[0]), substitute(parts[1]))
                }
                Yaml::Mapping(_) => (string(&v["source"]), string(&v["target"])),
                other => panic!("{}: unexpected volume {other:?}", self.name),
            })
            .collect()
    }

    /// Where the repository path `source` (e.g. `./deploy/x`) is mounted in the container.
    fn mount_of(&self, source: &str) -> String {
        let wanted = Path::new(source.trim_start_matches("./")).to_path_buf();
        self.volumes()
            .into_iter()
            .find(|(s, _)| Path::new(s.trim_start_matches("./")) == wanted)
            .map(|(_, target)| target)
            .unwrap_or_else(|| panic!("service {} does not mount {source}", self.name))
    }

    /// `(published, container)` port pairs.
    fn ports(&self) -> Vec<(u16, u16)> {
        let Some(list) = self.get("ports") else { return vec![] };
        list.as_sequence()
            .expect("ports is a list")
            .iter()
            .map(|p| match p {
                Yaml::Mapping(_) => (
                    string(&p["published"]).parse().unwrap(),
                    string(&p["target"]).parse().unwrap(),
                ),
                other => {
                    let s = string(other);
                    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
                    let container: u16 = parts[0].parse().unwrap_or_else(|_| panic!("port {s:?}"));
                    let published = parts.get(1).map_or(container, |p| p.parse().unwrap());
                    (published, container)
                }
            })
            .collect()
    }

    fn healthcheck(&self) -> Vec<String> {
        let check = self
            .get("healthcheck")
            .unwrap_or_else(|| panic!("service {} has no healthcheck", self.name));
        match &check["test"] {
            Yaml::Sequence(items) => items.iter().map(string).collect(),
            Yaml::String(s) => {
                let mut v = vec!["CMD-SHELL".to_string()];
                v.push(s.clone());
                v
            }
            other => panic!("{}: unexpected healthcheck {other:?}", self.name),
        }
    }

    fn depends_on(&self) -> BTreeMap<String, String> {
        match self.get("depends_on") {
            None => BTreeMap::new(),
            Some(Yaml::Sequence(items)) => items
                .iter()
                .map(|s| (string(s), "service_started".to_string()))
                .collect(),
            Some(Yaml::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    let condition = v.get("condition").map_or("service_started".to_string(), string);
                    (string(k), condition)
                })
                .collect(),
            Some(other) => panic!("{}: unexpected depends_on {other:?}", self.name),
        }
    }

    fn command(&self) -> Vec<String> {
        match self.get("command") {
            None => vec![],
            Some(Yaml::Sequence(items)) => items.iter().map(|s| substitute(&string(s))).collect(),
            Some(Yaml::String(s)) => s.split_whitespace().map(substitute).collect(),
            Some(other) => panic!("{}: unexpected command {other:?}", self.name),
        }
    }
}

struct Compose {
    doc: Yaml,
}

impl Compose {
    fn load() -> Compose {
        Compose {
            doc: yaml("docker-compose.yml"),
        }
    }

    fn service(&self, name: &str) -> Service {
        let def = self.doc["services"]
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
            .clone();
        Service {
            name: name.to_string(),
            def,
        }
    }

    fn service_names(&self) -> BTreeSet<String> {
        self.doc["services"]
            .as_mapping()
            .expect("services")
            .keys()
            .map(string)
            .collect()
    }
}

/// `host:port` → (host, port).
fn host_port(s: &str) -> (String, u16) {
    let (host, port) = s.rsplit_once(':').unwrap_or_else(|| panic!("{s:?} has no port"));
    (
        host.to_string(),
        port.parse().unwrap_or_else(|_| panic!("bad port in {s:?}")),
    )
}

/// `HEARTH_STORAGE=s3 docker compose --profile s3 up`: hearth reaches the MinIO of the profile
/// with the credentials MinIO is started with, and the bucket the profile creates.
#[test]
fn compose_s3_profile_matches_hearth() {
    let compose = Compose::load();
    let hearth = compose.service("hearth");
    let minio = compose.service("minio");
    let bucket = compose.service("minio-bucket");
    assert_eq!(hearth.env_var("HEARTH_STORAGE"), "local", "S3 is opt-in");
    let (host, port) = host_port(hearth.env_var("HEARTH_S3_ENDPOINT").trim_start_matches("http://"));
    assert_eq!((host.as_str(), port), ("minio", 9000));
    assert_eq!(hearth.env_var("HEARTH_S3_PATH_STYLE"), "true");
    assert_eq!(hearth.env_var("AWS_ACCESS_KEY_ID"), minio.env_var("MINIO_ROOT_USER"));
    assert_eq!(
        hearth.env_var("AWS_SECRET_ACCESS_KEY"),
        minio.env_var("MINIO_ROOT_PASSWORD")
    );
    assert_eq!(bucket.env_var("MINIO_ROOT_USER"), minio.env_var("MINIO_ROOT_USER"));
    assert_eq!(bucket.env_var("BUCKET"), hearth.env_var("HEARTH_S3_BUCKET"));
    let command = format!("{:?}", bucket.get("entrypoint").expect("minio-bucket entrypoint"));
    assert!(
        command.contains("http://minio:9000") && command.contains("mc mb"),
        "{command}"
    );
    assert!(minio
        .volumes()
        .iter()
        .any(|(source, target)| source == "minio-data" && target == "/data"));
}

#[test]
fn compose_defines_the_stack_and_hearth_reaches_postgres() {
    let compose = Compose::load();
    let names = compose.service_names();
    for s in SERVICES {
        assert!(names.contains(*s), "docker-compose.yml lacks service {s}: {names:?}");
    }
    for name in &names {
        let profiles = compose.service(name).get("profiles").cloned();
        if SERVICES.contains(&name.as_str()) {
            assert!(
                profiles.is_none(),
                "service {name}: the core stack must start with a plain `docker compose up`"
            );
        } else {
            // Anything else is optional: the S3 store behind the "s3" profile.
            let in_s3 = profiles
                .as_ref()
                .and_then(Yaml::as_sequence)
                .is_some_and(|p| p.iter().any(|v| v.as_str() == Some("s3")));
            assert!(in_s3, "service {name} is neither core nor in the s3 profile");
        }
    }

    let hearth = compose.service("hearth");
    let postgres = compose.service("postgres");

    // Built from the repository's Dockerfile.
    let context = match hearth.get("build").expect("hearth is built, not pulled") {
        Yaml::String(s) => s.clone(),
        m => m.get("context").map_or(".".to_string(), string),
    };
    assert_eq!(context, ".", "hearth is built from the repository root");
    assert!(repo().join("Dockerfile").is_file());

    // Listens on all interfaces of the container, on the port compose publishes as 8080.
    let (listen_host, listen_port) = host_port(&hearth.env_var("HEARTH_LISTEN"));
    assert_eq!(
        listen_host, "0.0.0.0",
        "hearth must listen beyond the container's loopback"
    );
    assert!(
        hearth.ports().contains(&(8080, listen_port)),
        "hearth's port {listen_port} must be published as 8080: {:?}",
        hearth.ports()
    );

    // HEARTH_DATABASE_URL points at the postgres service with the role and database that the
    // postgres image creates from its environment.
    let url = url::Url::parse(&hearth.env_var("HEARTH_DATABASE_URL")).expect("HEARTH_DATABASE_URL is a URL");
    assert!(matches!(url.scheme(), "postgres" | "postgresql"), "{url}");
    assert_eq!(url.host_str(), Some("postgres"), "the database is the compose service");
    assert_eq!(url.port().unwrap_or(5432), 5432);
    assert_eq!(url.username(), postgres.env_var("POSTGRES_USER"));
    assert_eq!(url.password().unwrap_or(""), postgres.env_var("POSTGRES_PASSWORD"));
    assert_eq!(url.path().trim_start_matches('/'), postgres.env_var("POSTGRES_DB"));
    assert!(
        string(postgres.get("image").expect("postgres image")).starts_with("postgres:"),
        "the official postgres image (its POSTGRES_* variables are relied upon)"
    );

    // hearth starts once PostgreSQL accepts connections: pg_isready for that role and database.
    assert_eq!(
        hearth.depends_on().get("postgres").map(String::as_str),
        Some("service_healthy")
    );
    let pg_check = postgres.healthcheck().join(" ");
    assert!(pg_check.contains("pg_isready"), "{pg_check}");
    assert!(pg_check.contains(&postgres.env_var("POSTGRES_USER")), "{pg_check}");
    assert!(pg_check.contains(&postgres.env_var("POSTGRES_DB")), "{pg_check}");

    // hearth's own health check is the binary's probe of /readyz on the port it listens on.
    let check = hearth.healthcheck();
    assert_eq!(
        check[0], "CMD",
        "exec form: the runtime image has no shell tools to rely on"
    );
    assert_eq!(&check[1..3], ["hearth", "healthcheck"], "{check:?}");
    if let Some(i) = check.iter().position(|a| a == "--url") {
        let probe = url::Url::parse(&check[i + 1]).expect("probe URL");
        assert_eq!(probe.host_str(), Some("127.0.0.1"));
        assert_eq!(probe.port_or_known_default(), Some(listen_port));
        assert_eq!(probe.path(), "/readyz");
    }

    // Data survives `docker compose down`: named volumes at the right places.
    let dockerfile = Dockerfile::load();
    let data_dir = dockerfile.env("HEARTH_DATA_DIR");
    let hearth_volumes = hearth.volumes();
    assert!(
        hearth_volumes.iter().any(|(_, target)| *target == data_dir),
        "hearth's data dir {data_dir} (Dockerfile ENV) must be a volume: {hearth_volumes:?}"
    );
    assert!(
        postgres
            .volumes()
            .iter()
            .any(|(_, target)| target == "/var/lib/postgresql/data"),
        "PostgreSQL's data must be a volume"
    );
}

#[test]
fn compose_named_volumes_are_declared_and_used() {
    let compose = Compose::load();
    let declared: BTreeSet<String> = compose.doc["volumes"]
        .as_mapping()
        .expect("top-level volumes")
        .keys()
        .map(string)
        .collect();
    let mut used = BTreeSet::new();
    for name in compose.service_names() {
        for (source, target) in compose.service(&name).volumes() {
            let is_path = source.starts_with('.') || source.starts_with('/') || source.starts_with('~');
            if is_path {
                let local = repo().join(source.trim_start_matches("./"));
                assert!(
                    local.exists(),
                    "service {name} mounts {source} at {target}, which does not exist in the repository"
                );
            } else {
                assert!(
                    declared.contains(&source),
                    "service {name}: volume {source} is not declared"
                );
                used.insert(source);
            }
        }
    }
    assert_eq!(declared, used, "declared named volumes that no service uses");
    for service in SERVICES.iter().filter(|s| **s != "hearth") {
        assert!(
            compose
                .service(service)
                .volumes()
                .iter()
                .any(|(s, _)| declared.contains(s)),
            "{service} keeps its state in a named volume"
        );
    }
}

#[test]
fn prometheus_scrapes_the_hearth_service() {
    let compose = Compose::load();
    let prometheus = compose.service("prometheus");
    let hearth = compose.service("hearth");

    let image = string(prometheus.get("image").expect("prometheus image"));
    assert!(image.starts_with("prom/prometheus"), "{image}");
    assert!(prometheus.ports().iter().any(|&(_, c)| c == 9090), "Prometheus on 9090");

    // The configuration file in the repository is the one Prometheus reads.
    let mount = prometheus.mount_of("./deploy/prometheus/prometheus.yml");
    let config_flag = prometheus
        .command()
        .into_iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(str::to_string))
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".to_string()); // the image's default
    assert_eq!(mount, config_flag, "Prometheus must read the mounted configuration");

    let config = yaml("deploy/prometheus/prometheus.yml");
    // Rule files are found relative to the configuration: each must be mounted beside it.
    let config_dir = std::path::Path::new(&config_flag)
        .parent()
        .expect("config in a directory");
    let rule_files = config["rule_files"].as_sequence().expect("rule_files (the alerts)");
    assert!(!rule_files.is_empty(), "the alerting rules are loaded");
    for file in rule_files.iter().map(string) {
        assert!(!file.starts_with('/'), "{file}: name rule files relative to the config");
        assert!(
            repo().join("deploy/prometheus").join(&file).is_file(),
            "deploy/prometheus/{file}"
        );
        assert_eq!(
            prometheus.mount_of(&format!("./deploy/prometheus/{file}")),
            config_dir.join(&file).display().to_string(),
            "{file} is mounted where prometheus.yml names it"
        );
    }
    let jobs = config["scrape_configs"].as_sequence().expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"].as_str() == Some("hearth"))
        .expect("a scrape job named hearth");
    assert_eq!(job.get("metrics_path").map(string).as_deref(), Some("/metrics"));
    let targets: Vec<String> = job["static_configs"]
        .as_sequence()
        .expect("static_configs")
        .iter()
        .flat_map(|sc| sc["targets"].as_sequence().expect("targets").iter().map(string))
        .collect();
    let (_, listen_port) = host_port(&hearth.env_var("HEARTH_LISTEN"));
    assert_eq!(
        targets,
        vec![format!("hearth:{listen_port}")],
        "the target is the compose service on the port hearth listens on"
    );
    let interval = config["global"]["scrape_interval"]
        .as_str()
        .expect("global scrape_interval");
    assert_eq!(interval, "15s");
}

#[test]
fn grafana_is_provisioned_from_the_repository() {
    let compose = Compose::load();
    let grafana = compose.service("grafana");
    let postgres = compose.service("postgres");
    let prometheus = compose.service("prometheus");

    let image = string(grafana.get("image").expect("grafana image"));
    assert!(image.starts_with("grafana/grafana"), "{image}");
    assert!(grafana.ports().contains(&(3000, 3000)), "Grafana on :3000");
    assert!(grafana.depends_on().contains_key("prometheus"));

    // Provisioning directory: datasources and dashboard providers.
    assert_eq!(
        grafana.mount_of("./deploy/grafana/provisioning"),
        "/etc/grafana/provisioning"
    );
    for sub in ["datasources/datasources.yml", "dashboards/dashboards.yml"] {
        assert!(repo().join("deploy/grafana/provisioning").join(sub).is_file(), "{sub}");
    }

    // The dashboard provider loads the directory compose mounts the dashboards into.
    let dashboards_mount = grafana.mount_of("./deploy/grafana/dashboards");
    let providers = yaml("deploy/grafana/provisioning/dashboards/dashboards.yml");
    let providers = providers["providers"].as_sequence().expect("providers");
    assert_eq!(providers.len(), 1);
    assert_eq!(string(&providers[0]["type"]), "file");
    assert_eq!(
        string(&providers[0]["options"]["path"]).trim_end_matches('/'),
        dashboards_mount.trim_end_matches('/')
    );
    let home = grafana.env_var("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH");
    let file = home
        .strip_prefix(&format!("{}/", dashboards_mount.trim_end_matches('/')))
        .unwrap_or_else(|| panic!("home dashboard {home} is outside {dashboards_mount}"));
    assert!(repo().join("deploy/grafana/dashboards").join(file).is_file(), "{file}");

    // Data sources: Prometheus (the compose service) and hearth's PostgreSQL.
    let sources = yaml("deploy/grafana/provisioning/datasources/datasources.yml");
    let sources = sources["datasources"].as_sequence().expect("datasources");
    let by_uid: BTreeMap<String, &Yaml> = sources.iter().map(|s| (string(&s["uid"]), s)).collect();
    assert_eq!(by_uid.len(), sources.len(), "data source uids are unique");

    let prom = by_uid.get("prometheus").expect("a data source with uid prometheus");
    assert_eq!(string(&prom["type"]), "prometheus");
    let prom_url = url::Url::parse(&string(&prom["url"])).expect("Prometheus URL");
    assert_eq!(prom_url.host_str(), Some("prometheus"));
    assert!(prometheus.ports().iter().any(|&(_, c)| Some(c) == prom_url.port()));
    let scrape = yaml("deploy/prometheus/prometheus.yml")["global"]["scrape_interval"].clone();
    assert_eq!(
        prom["jsonData"]["timeInterval"], scrape,
        "Grafana's $__rate_interval needs the scrape interval"
    );

    let pg = by_uid
        .get("hearth-postgres")
        .expect("a data source with uid hearth-postgres");
    assert_eq!(string(&pg["type"]), "grafana-postgresql-datasource");
    let (host, port) = host_port(&string(&pg["url"]));
    assert_eq!(
        (host.as_str(), port),
        ("postgres", 5432),
        "the compose postgres service"
    );
    let database = pg["jsonData"].get("database").or(pg.get("database")).map(string);
    assert_eq!(database, Some(postgres.env_var("POSTGRES_DB")));
    assert_eq!(string(&pg["user"]), postgres.env_var("POSTGRES_USER"));
    // The password is interpolated by Grafana from its environment, set by compose.
    let password = string(&pg["secureJsonData"]["password"]);
    let password = match password.strip_prefix('$') {
        Some(var) => grafana.env_var(var.trim_start_matches('{').trim_end_matches('}')),
        None => password,
    };
    assert_eq!(password, postgres.env_var("POSTGRES_PASSWORD"));

    // Every data source the dashboard uses is provisioned, with the same type.
    let mut used = BTreeSet::new();
    collect_datasources(&dashboard(), &mut used);
    assert!(used.len() >= 2, "{used:?}");
    for (kind, uid) in used {
        if kind == "grafana" || kind == "datasource" {
            continue; // Grafana's built-in annotations
        }
        let source = by_uid
            .get(&uid)
            .unwrap_or_else(|| panic!("the dashboard uses data source {uid}, which is not provisioned"));
        assert_eq!(string(&source["type"]), kind, "data source {uid}");
    }
}

/// `(type, uid)` of every `datasource` reference in the dashboard.
fn collect_datasources(value: &Json, out: &mut BTreeSet<(String, String)>) {
    match value {
        Json::Object(map) => {
            for (key, v) in map {
                if key == "datasource" {
                    let kind = v["type"].as_str().expect("datasource refs carry a type");
                    let uid = v["uid"].as_str().expect("datasource refs carry a uid, not a name");
                    out.insert((kind.to_string(), uid.to_string()));
                } else {
                    collect_datasources(v, out);
                }
            }
        }
        Json::Array(items) => items.iter().for_each(|v| collect_datasources(v, out)),
        _ => {}
    }
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[test]
fn dashboard_is_a_consistent_grafana_dashboard() {
    let d = dashboard();
    assert_eq!(d["uid"], "hearth");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36, "a current schema");
    assert!(d["id"].is_null(), "provisioned dashboards carry no database id");

    // The namespace variable: every namespace by default, several selectable.
    let vars = d["templating"]["list"].as_array().expect("templating");
    let ns = vars
        .iter()
        .find(|v| v["name"] == "namespace")
        .expect("namespace variable");
    assert_eq!(ns["type"], "query");
    assert_eq!(ns["datasource"]["uid"], "prometheus");
    assert_eq!(ns["definition"], "label_values(hearth_cache_hits_total, namespace)");
    assert_eq!(ns["query"]["query"], ns["definition"]);
    assert_eq!(ns["multi"], true);
    assert_eq!(ns["includeAll"], true);
    // "All" must mean every namespace, including those Prometheus has not seen lately (the
    // PostgreSQL panels cover months), hence a regex rather than the list of known values.
    assert_eq!(ns["allValue"], ".*");

    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut types = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().expect("title").to_string();
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "duplicate panel id: {title}"
        );
        types.insert(panel["type"].as_str().unwrap().to_string());
        let g = &panel["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "{title} is wider than the dashboard");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.clone()) {
                    panic!("panels {other} and {title} overlap");
                }
            }
        }
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            !panel["description"].as_str().unwrap_or("").is_empty(),
            "{title} explains itself"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let refs: BTreeSet<&str> = targets.iter().map(|t| t["refId"].as_str().unwrap()).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: duplicate refIds");
        for t in targets {
            assert_eq!(
                t["datasource"], panel["datasource"],
                "{title}: one data source per panel"
            );
            match t["datasource"]["uid"].as_str().unwrap() {
                "prometheus" => check_promql(&title, t["expr"].as_str().expect("expr")),
                "hearth-postgres" => check_sql(&title, t),
                other => panic!("{title}: unexpected data source {other}"),
            }
        }
    }
    for kind in ["timeseries", "stat", "table"] {
        assert!(types.contains(kind), "no {kind} panel: {types:?}");
    }
}

/// Grafana conventions every PromQL expression follows.
fn check_promql(title: &str, expr: &str) {
    // Windows adapt to the scrape interval and the zoom: no hard-coded `[5m]`.
    let mut rest = expr;
    while let Some(i) = rest.find('[') {
        let end = rest[i..].find(']').expect("closed range") + i;
        let window = &rest[i + 1..end];
        assert!(
            window == "$__rate_interval" || window == "$__range",
            "{title}: range [{window}] in {expr}"
        );
        rest = &rest[end..];
    }
    // Namespace-labelled metrics honour the namespace selector.
    for metric in [
        "hearth_cache_hits_total",
        "hearth_cache_misses_total",
        "hearth_cache_writes_total",
        "hearth_cache_conflicting_writes_total",
        "hearth_cache_served_bytes_total",
        "hearth_cache_received_bytes_total",
    ] {
        let mut rest = expr;
        while let Some(i) = rest.find(metric) {
            let after = &rest[i + metric.len()..];
            assert!(
                after.starts_with("{namespace=~\"$namespace\""),
                "{title}: {metric} without namespace=~\"$namespace\" in {expr}"
            );
            rest = after;
        }
    }
    // Ratios never divide by zero: the divisor is filtered (> 0) or clamped.
    if expr.contains(" / ") {
        let divisor = expr.rsplit(" / ").next().unwrap();
        assert!(
            divisor.contains("> 0") || divisor.contains("clamp_min"),
            "{title}: unguarded division in {expr}"
        );
    }
}

/// Grafana conventions every SQL query follows.
fn check_sql(title: &str, target: &Json) {
    let sql = target["rawSql"].as_str().expect("rawSql");
    assert_eq!(target["rawQuery"], true, "{title}");
    assert_eq!(target["editorMode"], "code", "{title}: raw SQL, not the builder");
    let format = target["format"].as_str().expect("format");
    assert!(matches!(format, "table" | "time_series"), "{title}: format {format}");
    assert!(sql.contains("FROM stats_hourly"), "{title}");
    assert!(
        sql.contains("$__unixEpochFilter(hour)"),
        "{title}: the time range applies (hour is in Unix seconds)"
    );
    assert!(
        sql.contains("namespace ~ '^${namespace:regex}$'"),
        "{title}: the namespace selector applies"
    );
    if format == "time_series" {
        assert!(
            sql.contains("AS \"time\"") || sql.contains("$__unixEpochGroupAlias("),
            "{title}"
        );
        assert!(sql.contains("ORDER BY 1"), "{title}: time series are sorted by time");
    }
}

/// A parsed Dockerfile: instructions with continuation lines joined.
struct Dockerfile {
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in read("Dockerfile").lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            if let Some(part) = trimmed.strip_suffix('\\') {
                current.push_str(part);
                current.push(' ');
                continue;
            }
            current.push_str(trimmed);
            let (op, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
            instructions.push((op.to_ascii_uppercase(), args.trim().to_string()));
            current.clear();
        }
        Dockerfile { instructions }
    }

    /// Instructions of each stage, in order.
    fn stages(&self) -> Vec<Vec<(String, String)>> {
        let mut stages: Vec<Vec<(String, String)>> = Vec::new();
        for (op, args) in &self.instructions {
            if op == "FROM" {
                stages.push(Vec::new());
            }
            stages
                .last_mut()
                .expect("the Dockerfile starts with FROM")
                .push((op.clone(), args.clone()));
        }
        stages
    }

    /// An `ENV` value of the final stage.
    fn env(&self, key: &str) -> String {
        let stages = self.stages();
        for (op, args) in stages.last().unwrap() {
            if op != "ENV" {
                continue;
            }
            for pair in args.split_whitespace() {
                if let Some(value) = pair.strip_prefix(&format!("{key}=")) {
                    return value.trim_matches('"').to_string();
                }
            }
        }
        panic!("the runtime stage sets no ENV {key}")
    }
}

/// Paths `cargo build` reads besides Cargo.toml and Cargo.lock: the manifest's targets and
/// what the sources embed at compile time (sqlx migrations, include_str!/include_bytes!).
fn build_inputs() -> BTreeSet<String> {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let mut inputs = BTreeSet::from(["Cargo.toml".to_string(), "Cargo.lock".to_string()]);
    if let Some(lib) = manifest.get("lib") {
        inputs.insert(
            lib.get("path")
                .and_then(|p| p.as_str())
                .unwrap_or("src/lib.rs")
                .to_string(),
        );
    }
    for (section, dir) in [("bin", "src/bin"), ("bench", "benches"), ("example", "examples")] {
        for target in manifest.get(section).and_then(|t| t.as_array()).into_iter().flatten() {
            let path = match target.get("path").and_then(|p| p.as_str()) {
                Some(p) => p.to_string(),
                None => format!("{dir}/{}.rs", target["name"].as_str().unwrap()),
            };
            inputs.insert(path);
        }
    }
    if manifest.get("package").and_then(|p| p.get("build")).is_some() || repo().join("build.rs").exists() {
        inputs.insert("build.rs".to_string());
    }
    let mut sources = Vec::new();
    walk(&repo().join("src"), &mut sources);
    for file in sources.iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        for macro_call in ["migrate!(\"", "include_str!(\"", "include_bytes!(\""] {
            for (i, _) in text.match_indices(macro_call) {
                let start = i + macro_call.len();
                let end = text[start..].find('"').unwrap() + start;
                let path = &text[start..end];
                let resolved = if macro_call == "migrate!(\"" {
                    PathBuf::from(path) // relative to the manifest directory
                } else {
                    file.parent().unwrap().strip_prefix(repo()).unwrap().join(path)
                };
                inputs.insert(resolved.to_string_lossy().to_string());
            }
        }
    }
    for input in &inputs {
        assert!(repo().join(input).exists(), "{input} is referenced but missing");
    }
    inputs
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Source paths of a `COPY` (without `--from`), or None for a `COPY --from=…`.
fn copy_sources(args: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = args.split_whitespace().collect();
    if words.iter().any(|w| w.starts_with("--from")) {
        return None;
    }
    let words: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
    assert!(words.len() >= 2, "COPY {args}");
    Some(
        words[..words.len() - 1]
            .iter()
            .map(|s| s.trim_start_matches("./").trim_end_matches('/').to_string())
            .collect(),
    )
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_healthchecked() {
    let dockerfile = Dockerfile::load();
    let stages = dockerfile.stages();
    assert!(stages.len() >= 2, "a build stage and a small runtime stage");
    let runtime = stages.last().unwrap();
    let build = &stages[0];

    let runtime_base = &runtime[0].1;
    assert!(
        runtime_base.contains("slim") || runtime_base.contains("distroless") || runtime_base.contains("alpine"),
        "a small runtime base image, not {runtime_base}"
    );
    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, u)| u.clone())
        .expect("the runtime stage sets USER");
    assert!(!matches!(user.as_str(), "root" | "0" | "0:0"), "runs as {user}");

    let healthcheck = runtime
        .iter()
        .find(|(op, _)| op == "HEALTHCHECK")
        .map(|(_, a)| a.clone())
        .expect("a HEALTHCHECK");
    let cmd = healthcheck.split_once("CMD").expect("HEALTHCHECK CMD").1.trim();
    let argv: Vec<String> = serde_json::from_str(cmd).expect("exec form: HEALTHCHECK CMD [\"hearth\", ...]");
    assert_eq!(&argv[..2], ["hearth", "healthcheck"], "{argv:?}");

    let exposed: Vec<String> = runtime
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert!(
        exposed.iter().any(|p| p.trim_end_matches("/tcp") == "8080"),
        "{exposed:?}"
    );
    let (_, port) = host_port(&dockerfile.env("HEARTH_LISTEN"));
    assert_eq!(port, 8080, "the default healthcheck URL probes port 8080");
    let entrypoint = runtime.iter().find(|(op, _)| op == "ENTRYPOINT").expect("ENTRYPOINT");
    assert_eq!(entrypoint.1, "[\"hearth\"]");

    // The build stage copies everything cargo reads...
    let copied: Vec<String> = build
        .iter()
        .filter(|(op, _)| op == "COPY")
        .filter_map(|(_, a)| copy_sources(a))
        .flatten()
        .collect();
    for input in build_inputs() {
        assert!(
            copied
                .iter()
                .any(|c| c == "." || input == *c || input.starts_with(&format!("{c}/"))),
            "the build stage does not COPY {input} (copies {copied:?})"
        );
    }
    assert!(
        build
            .iter()
            .any(|(op, a)| op == "RUN" && a.contains("cargo build") && a.contains("--locked")),
        "the image is built from Cargo.lock"
    );
    // ... and the runtime stage takes the binary from it and files that exist.
    let from_build: Vec<&String> = runtime
        .iter()
        .filter(|(op, a)| op == "COPY" && a.contains("--from="))
        .map(|(_, a)| a)
        .collect();
    assert!(
        from_build.iter().any(|a| a.contains("target/release/hearth")),
        "{from_build:?}"
    );
    for (op, args) in runtime {
        if op == "COPY" {
            for source in copy_sources(args).into_iter().flatten() {
                assert!(repo().join(&source).exists(), "COPY {source}: no such file");
            }
        }
    }
    let config = dockerfile.env("HEARTH_CONFIG");
    assert!(
        runtime.iter().any(|(op, a)| op == "COPY" && a.ends_with(&config)),
        "HEARTH_CONFIG={config} is copied into the image"
    );

    // The build context leaves out what is big or private, but nothing the build copies.
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect();
    for must in ["target", ".git"] {
        assert!(ignored.iter().any(|i| i == must), ".dockerignore must exclude {must}");
    }
    let all_copied = stages
        .iter()
        .flatten()
        .filter(|(op, _)| op == "COPY")
        .filter_map(|(_, a)| copy_sources(a))
        .flatten();
    for source in all_copied {
        for pattern in &ignored {
            assert!(
                !(source == *pattern || source.starts_with(&format!("{pattern}/"))),
                ".dockerignore excludes {pattern}, which the Dockerfile copies ({source})"
            );
        }
    }
}

#[test]
fn docker_compose_accepts_the_file() {
    let output = std::process::Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run docker-compose ({e}); ./scripts/test.sh installs it (Debian package \
                 docker-compose, which validates a compose file without a container engine)"
            )
        });
    assert!(
        output.status.success(),
        "docker-compose rejects docker-compose.yml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
