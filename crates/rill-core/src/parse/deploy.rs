//! `deploy:` and its alias `_unstable_deploy:`.

use std::path::PathBuf;

use crate::model::{Deploy, Distribute};
use crate::read::{Fields, Reader};
use crate::yaml::Node;

const DEPLOY_FIELDS: &[&str] = &["machine", "labels", "distribute", "working_dir"];

/// The placement of a node, from `deploy` or `_unstable_deploy` (only one may be given).
pub(super) fn deploy(r: &mut Reader, fields: &Fields, label: &str) -> Deploy {
    let main = fields.entry("deploy");
    let alias = fields.entry("_unstable_deploy");
    if let (Some(main), Some(alias)) = (main, alias) {
        let later = if alias.key.pos > main.key.pos { alias } else { main };
        let hint = "`_unstable_deploy` is an alias of `deploy`; keep only one";
        r.error_hint(later.key.pos, format!("{label} has both `deploy` and `_unstable_deploy`"), hint);
    }
    // Both are checked so that every mistake is reported; `deploy` wins if both are present.
    let main = main.map(|entry| deploy_section(r, entry.value, &format!("`deploy` of {label}")));
    let alias = alias.map(|entry| deploy_section(r, entry.value, &format!("`_unstable_deploy` of {label}")));
    main.or(alias).unwrap_or_default()
}

fn deploy_section(r: &mut Reader, value: &Node, owner: &str) -> Deploy {
    let mut deploy = Deploy::default();
    let Some(entries) = r.map(value, owner) else {
        return deploy;
    };
    let fields = r.fields(entries, DEPLOY_FIELDS, owner);
    deploy.machine = fields.get("machine").and_then(|node| r.optional_text(node, &format!("`machine` in {owner}")));
    if let Some(value) = fields.get("labels")
        && let Some(entries) = r.map(value, &format!("`labels` in {owner}"))
    {
        for entry in r.entries(entries, "label", owner) {
            let what = format!("label `{}` in {owner}", entry.name);
            if let Some(text) = r.scalar(entry.value, &what) {
                deploy.labels.insert(entry.name, text);
            }
        }
    }
    if let Some(value) = fields.get("distribute")
        && let Some(text) = r.optional_text(value, &format!("`distribute` in {owner}"))
    {
        match text.as_str() {
            "local" => deploy.distribute = Distribute::Local,
            "scp" => deploy.distribute = Distribute::Scp,
            "http" => deploy.distribute = Distribute::Http,
            _ => {
                let hint = "expected one of: local, scp, http";
                r.error_hint(value.pos, format!("invalid distribute `{text}` in {owner}"), hint);
            }
        }
    }
    deploy.working_dir = fields
        .get("working_dir")
        .and_then(|node| r.optional_text(node, &format!("`working_dir` in {owner}")))
        .map(PathBuf::from);
    deploy
}
