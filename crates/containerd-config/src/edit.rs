//! Pure edits of containerd config text: add, update or remove the `flox` CRI runtime.
//!
//! Everything here works on strings so it can be golden-tested; reading files, following
//! `imports` and restarting containerd live in [`crate::install`].
//!
//! Layout rules: the document is edited with `toml_edit`, so comments, key order, quoting and
//! indentation of everything the user wrote stay as they were. New tables are placed right
//! after the last existing runtime table and copy its indentation and quote style, so the
//! result reads as if it had been written by hand.
use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, Value};

/// Name of the CRI runtime handler (the RuntimeClass `handler`).
pub const RUNTIME_NAME: &str = "flox";
/// Annotations containerd passes through to the OCI spec (pod and container).
pub const ANNOTATION_PATTERN: &str = "flox.dev/*";
/// The shim API containerd speaks to the launcher: the runc shim's, since the launcher execs it.
pub const RUNTIME_TYPE: &str = "io.containerd.runc.v2";
/// containerd 2.x sandbox controller for ordinary pods.
pub const DEFAULT_SANDBOXER: &str = "podsandbox";

/// The two binaries containerd must call for the flox runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloxRuntime {
    /// Becomes `options.BinaryName`: the runc wrapper (`flox-runc`).
    pub runc_wrapper: PathBuf,
    /// Becomes `runtime_path`: the shim launcher (`containerd-shim-flox-v2`).
    pub shim_launcher: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("containerd config is not valid TOML: {0}")]
    Parse(#[from] toml_edit::TomlError),
    #[error("containerd config field `version` = {value}: accepted values are 1, 2 or 3 (absent means 1)")]
    UnsupportedVersion { value: String },
    #[error(
        "containerd config field `{path}` is {found}, expected a table; edit it by hand into a [table] and re-run"
    )]
    NotATable { path: String, found: &'static str },
    #[error("{field} path {path:?} is not valid UTF-8; containerd configs hold UTF-8 strings only")]
    NonUtf8Path { field: &'static str, path: PathBuf },
}

/// containerd config schema versions, which decide where the CRI plugin lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConfigVersion {
    /// No `version` key (or 1): plugins are keyed by short ID, `plugins.cri`.
    V1,
    /// containerd 1.x: `plugins."io.containerd.grpc.v1.cri"`.
    V2,
    /// containerd 2.x: runtimes under `plugins."io.containerd.cri.v1.runtime"`.
    V3,
}

impl ConfigVersion {
    /// The key under `plugins` that holds the CRI runtimes; an import defining this key replaces
    /// the whole section of the main file (containerd merges plugin sections by replacement).
    pub fn cri_plugin_key(self) -> &'static str {
        match self {
            ConfigVersion::V1 => "cri",
            ConfigVersion::V2 => "io.containerd.grpc.v1.cri",
            ConfigVersion::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    /// Table path from the document root to the `runtimes` table.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        ["plugins", self.cri_plugin_key(), "containerd", "runtimes"]
    }

    /// Human-readable TOML header of the flox runtime table, for messages.
    pub fn flox_table_header(self) -> String {
        format!("[plugins.\"{}\".containerd.runtimes.{RUNTIME_NAME}]", self.cri_plugin_key())
    }
}

/// Reads the config's `version`.
pub fn detect_version(doc: &DocumentMut) -> Result<ConfigVersion, EditError> {
    match doc.get("version") {
        None => Ok(ConfigVersion::V1),
        Some(item) => match item.as_integer() {
            Some(0 | 1) => Ok(ConfigVersion::V1),
            Some(2) => Ok(ConfigVersion::V2),
            Some(3) => Ok(ConfigVersion::V3),
            _ => Err(EditError::UnsupportedVersion { value: item.to_string().trim().to_owned() }),
        },
    }
}

/// What a config says about the flox runtime and its neighbours; used by install and doctor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FloxRuntimeFacts {
    pub runtime_type: Option<String>,
    pub runtime_path: Option<String>,
    pub binary_name: Option<String>,
    pub pod_annotations: Vec<String>,
    pub container_annotations: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFacts {
    pub version: ConfigVersion,
    /// `plugins.<cri key>` exists (so, as an import, this file replaces the main file's section).
    pub defines_cri_plugin: bool,
    /// The `imports` array as written.
    pub imports: Vec<String>,
    pub flox: Option<FloxRuntimeFacts>,
    /// `BinaryName` of the runc runtime whose options flox copies (None when empty or absent).
    pub runc_binary_name: Option<String>,
    /// `SystemdCgroup` of that runc runtime, as TOML value text (`true`/`false`).
    pub runc_systemd_cgroup: Option<String>,
}

/// Reads the facts install and doctor need, without changing anything.
pub fn inspect(config_text: &str) -> Result<ConfigFacts, EditError> {
    let doc: DocumentMut = config_text.parse()?;
    let version = detect_version(&doc)?;
    let plugin = doc.get("plugins").and_then(Item::as_table_like).and_then(|p| p.get(version.cri_plugin_key()));
    let runtimes = lookup(doc.as_item(), &version.runtimes_path());
    let flox = runtimes.and_then(|r| r.get(RUNTIME_NAME)).map(|flox| FloxRuntimeFacts {
        runtime_type: flox.get("runtime_type").and_then(Item::as_str).map(str::to_owned),
        runtime_path: flox.get("runtime_path").and_then(Item::as_str).map(str::to_owned),
        binary_name: flox.get("options").and_then(|o| o.get("BinaryName")).and_then(Item::as_str).map(str::to_owned),
        pod_annotations: string_array(flox.get("pod_annotations")),
        container_annotations: string_array(flox.get("container_annotations")),
    });
    let imports = string_array(doc.get("imports"));
    let runc_options = source_runtime(&doc, version).and_then(|rt| rt.get("options"));
    let runc_systemd_cgroup = runc_options.and_then(|o| o.get("SystemdCgroup")).and_then(Item::as_value).map(|v| {
        // Without the comment or spacing around it.
        let mut v = v.clone();
        v.decor_mut().clear();
        v.to_string()
    });
    let runc_binary_name = runc_options
        .and_then(|o| o.get("BinaryName"))
        .and_then(Item::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok(ConfigFacts {
        version,
        defines_cri_plugin: plugin.is_some(),
        imports,
        flox,
        runc_binary_name,
        runc_systemd_cgroup,
    })
}

fn string_array(item: Option<&Item>) -> Vec<String> {
    item.and_then(Item::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn lookup<'a>(mut item: &'a Item, path: &[&str]) -> Option<&'a Item> {
    for key in path {
        item = item.as_table_like()?.get(key)?;
    }
    Some(item)
}

/// The runc runtime whose settings flox copies: `runtimes.runc`, else the default runtime when it
/// is a runc-shim runtime, else the legacy `containerd.default_runtime`.
fn source_runtime(doc: &DocumentMut, version: ConfigVersion) -> Option<&Item> {
    let [plugins, cri, containerd, _] = version.runtimes_path();
    let containerd = lookup(doc.as_item(), &[plugins, cri, containerd])?;
    let runtimes = containerd.get("runtimes");
    let is_runc_shim = |rt: &&Item| rt.get("runtime_type").and_then(Item::as_str).is_none_or(|t| t == RUNTIME_TYPE);
    if let Some(runc) = runtimes.and_then(|r| r.get("runc")) {
        return Some(runc);
    }
    let default_name = containerd.get("default_runtime_name").and_then(Item::as_str);
    if let Some(rt) =
        default_name.filter(|n| *n != RUNTIME_NAME).and_then(|n| runtimes.and_then(|r| r.get(n))).filter(is_runc_shim)
    {
        return Some(rt);
    }
    containerd.get("default_runtime").filter(is_runc_shim)
}

/// Adds runtime `flox` to the config, or brings an existing one up to date. Idempotent:
/// applying it to its own output returns the same text.
pub fn add_flox_runtime(config_text: &str, rt: &FloxRuntime) -> Result<String, EditError> {
    let wrapper = path_str("runc_wrapper", &rt.runc_wrapper)?;
    let launcher = path_str("shim_launcher", &rt.shim_launcher)?;
    let mut doc: DocumentMut = config_text.parse()?;
    let version = detect_version(&doc)?;
    let doc_was_empty = doc.as_table().is_empty();

    // Collect what to copy before borrowing the document mutably.
    let source = source_runtime(&doc, version);
    // Layout follows the copied runtime, else the last runtime the file already has.
    let last_runtime = lookup(doc.as_item(), &version.runtimes_path())
        .and_then(Item::as_table_like)
        .and_then(|r| r.iter().filter(|(k, i)| *k != RUNTIME_NAME && i.is_table()).last())
        .map(|(_, item)| item);
    let style = Style::from_source(source.or(last_runtime), config_text);
    let mut desired_options: Vec<(String, Value)> = Vec::new();
    if let Some(options) = source.and_then(|s| s.get("options")).and_then(Item::as_table_like) {
        for (key, item) in options.iter() {
            if let Some(value) = item.as_value() {
                let value = if key == "BinaryName" { style.string(wrapper) } else { value.clone() };
                desired_options.push((key.to_owned(), value));
            }
        }
    }
    if !desired_options.iter().any(|(k, _)| k == "BinaryName") {
        desired_options.push(("BinaryName".to_owned(), style.string(wrapper)));
    }
    let mut desired: Vec<(String, Value)> = vec![
        ("runtime_type".to_owned(), style.string(RUNTIME_TYPE)),
        ("runtime_path".to_owned(), style.string(launcher)),
        ("pod_annotations".to_owned(), style.string_array(&[ANNOTATION_PATTERN])),
        ("container_annotations".to_owned(), style.string_array(&[ANNOTATION_PATTERN])),
    ];
    // The spec the node's pods start from (kind mounts product_uuid through it).
    if let Some(spec) = source
        .and_then(|s| s.get("base_runtime_spec"))
        .and_then(Item::as_value)
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        desired.push(("base_runtime_spec".to_owned(), spec.clone()));
    }
    if version == ConfigVersion::V3 {
        let sandboxer = source
            .and_then(|s| s.get("sandboxer"))
            .and_then(Item::as_value)
            .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
            .cloned()
            .unwrap_or_else(|| style.string(DEFAULT_SANDBOXER));
        desired.push(("sandboxer".to_owned(), sandboxer));
    }

    let runtimes = ensure_table_path(doc.as_table_mut(), &version.runtimes_path())?;
    let creating = !runtimes.contains_key(RUNTIME_NAME);
    if creating {
        let mut flox = Table::new();
        let mut options = Table::new();
        let header_prefix = if doc_was_empty { String::new() } else { format!("\n{}", style.header_indent) };
        let options_prefix = format!("\n{}", style.options_header_indent);
        flox.decor_mut().set_prefix(header_prefix);
        options.decor_mut().set_prefix(options_prefix);
        flox.insert("options", Item::Table(options));
        runtimes.insert(RUNTIME_NAME, Item::Table(flox));
    }
    let flox = as_table_mut(runtimes, RUNTIME_NAME, "runtimes.flox")?;
    // Values go before the options sub-table in the map; toml_edit prints key-values first anyway.
    for (key, value) in &desired {
        set_value(flox, key, value, &style.key_indent);
    }
    if !flox.contains_key("options") {
        let mut options = Table::new();
        options.decor_mut().set_prefix(format!("\n{}", style.options_header_indent));
        flox.insert("options", Item::Table(options));
    }
    let options = as_table_mut(flox, "options", "runtimes.flox.options")?;
    for (key, value) in &desired_options {
        set_value(options, key, value, &style.options_key_indent);
    }
    Ok(doc.to_string())
}

/// Removes runtime `flox`. Parent tables that `add_flox_runtime` created are implicit (no header
/// of their own), so once empty they print nothing and the original text comes back.
pub fn remove_flox_runtime(config_text: &str) -> Result<String, EditError> {
    let mut doc: DocumentMut = config_text.parse()?;
    let version = detect_version(&doc)?;
    let path = version.runtimes_path();
    if let Some(runtimes) = lookup_table_mut(doc.as_table_mut(), &path) {
        runtimes.remove(RUNTIME_NAME);
    }
    Ok(doc.to_string())
}

fn lookup_table_mut<'a>(mut table: &'a mut Table, path: &[&str]) -> Option<&'a mut Table> {
    for key in path {
        table = table.get_mut(key)?.as_table_mut()?;
    }
    Some(table)
}

fn path_str<'a>(field: &'static str, path: &'a Path) -> Result<&'a str, EditError> {
    path.to_str().ok_or_else(|| EditError::NonUtf8Path { field, path: path.to_owned() })
}

fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(Value::InlineTable(_)) => "an inline table",
        Item::Value(_) => "a value",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

/// Walks/creates `path`; created tables are implicit so no empty headers appear.
fn ensure_table_path<'a>(mut table: &'a mut Table, path: &[&str]) -> Result<&'a mut Table, EditError> {
    for (depth, key) in path.iter().enumerate() {
        if !table.contains_key(key) {
            let mut new = Table::new();
            new.set_implicit(true);
            table.insert(key, Item::Table(new));
        }
        let shown = path[..=depth].join(".");
        table = as_table_mut(table, key, &shown)?;
    }
    Ok(table)
}

fn as_table_mut<'a>(table: &'a mut Table, key: &str, shown: &str) -> Result<&'a mut Table, EditError> {
    let item = table.get_mut(key).expect("caller ensured the key exists");
    let found = item_kind(item);
    item.as_table_mut().ok_or_else(|| EditError::NotATable { path: shown.to_owned(), found })
}

/// Sets `key` to `value` unless it already holds the same value, so formatting of values that
/// are already right is untouched (that is what makes the edit idempotent).
fn set_value(table: &mut Table, key: &str, value: &Value, key_indent: &str) {
    let mut value = value.clone();
    value.decor_mut().clear();
    match table.get_mut(key) {
        Some(existing) if existing.as_value().is_some_and(|v| same_value(v, &value)) => {}
        Some(existing) => {
            let decor = existing.as_value().map(|v| v.decor().clone());
            if let Some(decor) = decor {
                *value.decor_mut() = decor;
            }
            *existing = Item::Value(value);
        }
        None => {
            table.insert(key, Item::Value(value));
            if let Some(mut k) = table.key_mut(key) {
                k.leaf_decor_mut().set_prefix(key_indent.to_owned());
            }
        }
    }
}

/// Equality of TOML values ignoring formatting.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Integer(a), Value::Integer(b)) => a.value() == b.value(),
        (Value::Float(a), Value::Float(b)) => a.value() == b.value(),
        (Value::Boolean(a), Value::Boolean(b)) => a.value() == b.value(),
        (Value::Datetime(a), Value::Datetime(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| same_value(x, y))
        }
        (Value::InlineTable(a), Value::InlineTable(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => false,
    }
}

/// How the neighbouring runtime is written, so new tables look like the rest of the file.
struct Style {
    literal_strings: bool,
    header_indent: String,
    key_indent: String,
    options_header_indent: String,
    options_key_indent: String,
}

impl Style {
    fn from_source(source: Option<&Item>, config_text: &str) -> Style {
        let table = source.and_then(Item::as_table);
        let options = table.and_then(|t| t.get("options")).and_then(Item::as_table);
        let runtime_header_indent = table.map(header_indent).unwrap_or_default();
        let key_indent = table.and_then(first_key_indent).unwrap_or_else(|| runtime_header_indent.clone());
        let options_header_indent = options.map(header_indent).unwrap_or_else(|| key_indent.clone());
        // Without an options table to copy from, indent its keys as the runtime's keys are
        // indented relative to the runtime's header.
        let step = key_indent.strip_prefix(runtime_header_indent.as_str()).unwrap_or("").to_owned();
        let options_key_indent =
            options.and_then(first_key_indent).unwrap_or_else(|| format!("{options_header_indent}{step}"));
        // containerd 2.x writes '...' strings; follow the file when its runtime does.
        let literal_strings = table
            .and_then(|t| t.get("runtime_type"))
            .and_then(Item::as_value)
            .map(|v| v.to_string().trim_start().starts_with('\''))
            .unwrap_or_else(|| !config_text.contains('"') && config_text.contains('\''));
        Style {
            literal_strings,
            header_indent: runtime_header_indent,
            key_indent,
            options_header_indent,
            options_key_indent,
        }
    }

    fn string(&self, s: &str) -> Value {
        if self.literal_strings && !s.contains('\'') && !s.contains('\n') {
            let mut v: Value = format!("'{s}'").parse().expect("a literal string parses");
            v.decor_mut().clear();
            v
        } else {
            Value::from(s)
        }
    }

    fn string_array(&self, items: &[&str]) -> Value {
        let mut array = Array::new();
        for item in items {
            array.push_formatted(self.string(item));
        }
        Value::Array(array)
    }
}

/// The whitespace on the header line before `[` (the prefix after its last newline).
fn header_indent(table: &Table) -> String {
    let prefix = table.decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
    last_line_whitespace(prefix)
}

fn first_key_indent(table: &Table) -> Option<String> {
    let (key, _) = table.iter().find(|(_, item)| item.is_value())?;
    let prefix = table.key(key)?.leaf_decor().prefix().and_then(|p| p.as_str()).unwrap_or("");
    Some(last_line_whitespace(prefix))
}

fn last_line_whitespace(prefix: &str) -> String {
    let last = prefix.rsplit('\n').next().unwrap_or("");
    last.chars().take_while(|c| *c == ' ' || *c == '\t').collect()
}

/// First line of the block added to Go templates (k3s/RKE2 `config.toml.tmpl`, nodeadm).
pub const TEMPLATE_BLOCK_BEGIN: &str =
    "# BEGIN imageless flox runtime (written by `imageless install`, removed by `imageless uninstall`)";
/// Last line of that block.
pub const TEMPLATE_BLOCK_END: &str = "# END imageless flox runtime";

/// Reads `version = N` from a Go template's text: the first such line before any table header.
/// None when the template does not say (k3s/RKE2's `{{ template "base" . }}` renders the version
/// from Go code, so the text has none).
pub fn detect_template_version(template_text: &str) -> Option<ConfigVersion> {
    for line in template_text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            break;
        }
        if let Some(rest) = line.strip_prefix("version") {
            match rest.trim_start().strip_prefix('=').map(str::trim) {
                Some("3") => return Some(ConfigVersion::V3),
                Some("2") => return Some(ConfigVersion::V2),
                Some(_) => return Some(ConfigVersion::V1),
                None => {}
            }
        }
    }
    None
}

/// What a template's text may not say but its rendered config does: the schema version and
/// runc's `SystemdCgroup` (k3s/RKE2 render both from Go code behind `{{ template "base" . }}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDefaults {
    /// Used when the template has no `version = N` line before its first table.
    pub version: ConfigVersion,
    /// Value text for `SystemdCgroup` when the template has no `SystemdCgroup =` line.
    pub systemd_cgroup: Option<String>,
}

impl Default for TemplateDefaults {
    fn default() -> Self {
        TemplateDefaults { version: ConfigVersion::V1, systemd_cgroup: None }
    }
}

/// Adds the flox runtime to a Go text/template containerd config. Templates are not TOML
/// (`{{ ... }}` may sit anywhere), so the runtime goes in as one marked block at the end, where
/// no `{{if}}`/`{{range}}` can enclose it; re-running replaces the block. `SystemdCgroup` is
/// copied verbatim from the template's first `SystemdCgroup =` line (k3s writes
/// `{{ .SystemdCgroup }}` there), so the runtime follows the node like runc does; `defaults` fill
/// in the version and `SystemdCgroup` a template does not spell out.
pub fn add_flox_runtime_template(
    template_text: &str,
    rt: &FloxRuntime,
    defaults: &TemplateDefaults,
) -> Result<String, EditError> {
    let wrapper = path_str("runc_wrapper", &rt.runc_wrapper)?;
    let launcher = path_str("shim_launcher", &rt.shim_launcher)?;
    let base = remove_flox_runtime_template(template_text);
    let version = detect_template_version(&base).unwrap_or(defaults.version);
    let key = version.cri_plugin_key();
    let systemd_cgroup = base
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("SystemdCgroup")?;
            Some(rest.trim_start().strip_prefix('=')?.trim().to_owned())
        })
        .or_else(|| defaults.systemd_cgroup.clone());
    let quote = |s: &str| Value::from(s).to_string().trim().to_owned();
    let mut block = format!("{TEMPLATE_BLOCK_BEGIN}\n[plugins.\"{key}\".containerd.runtimes.{RUNTIME_NAME}]\n");
    block.push_str(&format!("  runtime_type = {}\n", quote(RUNTIME_TYPE)));
    block.push_str(&format!("  runtime_path = {}\n", quote(launcher)));
    block.push_str(&format!("  pod_annotations = [{}]\n", quote(ANNOTATION_PATTERN)));
    block.push_str(&format!("  container_annotations = [{}]\n", quote(ANNOTATION_PATTERN)));
    if version == ConfigVersion::V3 {
        block.push_str(&format!("  sandboxer = {}\n", quote(DEFAULT_SANDBOXER)));
    }
    block.push_str(&format!("[plugins.\"{key}\".containerd.runtimes.{RUNTIME_NAME}.options]\n"));
    block.push_str(&format!("  BinaryName = {}\n", quote(wrapper)));
    if let Some(value) = systemd_cgroup {
        block.push_str(&format!("  SystemdCgroup = {value}\n"));
    }
    block.push_str(TEMPLATE_BLOCK_END);
    block.push('\n');
    // Exactly one newline separates the original text from the block (a blank line when the
    // template ends with a newline), so removal strips exactly one and gets the bytes back.
    let mut out = base;
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&block);
    Ok(out)
}

/// Removes the block [`add_flox_runtime_template`] added (and the newline it put before it).
pub fn remove_flox_runtime_template(template_text: &str) -> String {
    let Some(begin) = template_text.find(TEMPLATE_BLOCK_BEGIN) else {
        return template_text.to_owned();
    };
    let end = template_text[begin..]
        .find(TEMPLATE_BLOCK_END)
        .map(|i| begin + i + TEMPLATE_BLOCK_END.len())
        .unwrap_or(template_text.len());
    let end = if template_text[end..].starts_with('\n') { end + 1 } else { end };
    let start = if template_text[..begin].ends_with('\n') { begin - 1 } else { begin };
    format!("{}{}", &template_text[..start], &template_text[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> FloxRuntime {
        FloxRuntime {
            runc_wrapper: "/usr/local/bin/flox-runc".into(),
            shim_launcher: "/usr/local/bin/containerd-shim-flox-v2".into(),
        }
    }

    #[test]
    fn empty_config_gets_v1_section() {
        let out = add_flox_runtime("", &rt()).unwrap();
        assert!(out.starts_with("[plugins.cri.containerd.runtimes.flox]\n"), "{out}");
        assert!(out.contains("BinaryName = \"/usr/local/bin/flox-runc\""), "{out}");
        assert_eq!(remove_flox_runtime(&out).unwrap(), "");
        assert_eq!(add_flox_runtime(&out, &rt()).unwrap(), out);
    }

    #[test]
    fn v2_copies_runc_options_and_is_idempotent() {
        let input = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    SystemdCgroup = true # comment\n\n# tail\n[grpc]\n  address = \"x\"\n";
        let out = add_flox_runtime(input, &rt()).unwrap();
        let facts = inspect(&out).unwrap();
        let flox = facts.flox.unwrap();
        assert_eq!(flox.binary_name.as_deref(), Some("/usr/local/bin/flox-runc"));
        assert_eq!(flox.pod_annotations, vec!["flox.dev/*"]);
        assert!(
            out.contains("\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.flox]\n  runtime_type"),
            "{out}"
        );
        assert!(
            out.contains("\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.flox.options]\n"),
            "{out}"
        );
        assert!(out.contains("    SystemdCgroup = true\n    BinaryName"), "{out}");
        assert!(out.find("runtimes.flox]").unwrap() < out.find("# tail").unwrap(), "{out}");
        assert_eq!(add_flox_runtime(&out, &rt()).unwrap(), out);
        assert_eq!(remove_flox_runtime(&out).unwrap(), input);
    }

    #[test]
    fn update_changes_only_what_differs() {
        let out = add_flox_runtime("version = 3\n", &rt()).unwrap();
        assert!(out.contains("sandboxer = \"podsandbox\""), "{out}");
        let other = FloxRuntime { runc_wrapper: "/opt/bin/flox-runc".into(), ..rt() };
        let updated = add_flox_runtime(&out, &other).unwrap();
        assert_eq!(updated, out.replace("/usr/local/bin/flox-runc", "/opt/bin/flox-runc"));
    }

    #[test]
    fn bad_version_names_field_and_accepted_values() {
        let err = add_flox_runtime("version = 7\n", &rt()).unwrap_err().to_string();
        assert!(err.contains("`version` = 7") && err.contains("1, 2 or 3"), "{err}");
    }

    #[test]
    fn runtimes_as_value_is_refused_with_path() {
        let err =
            add_flox_runtime("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = 1\n", &rt())
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("plugins.io.containerd.grpc.v1.cri.containerd.runtimes") && err.contains("a value"),
            "{err}"
        );
    }
}
