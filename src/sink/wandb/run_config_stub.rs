use crate::source::wandb::value::Value;
use crate::source::wandb::views::RunState;
pub fn upsert_config(state: &RunState) -> String {
    let mut m = crate::source::wandb::value::Map::new();
    for (k, v) in &state.config {
        let mut o = crate::source::wandb::value::Map::new();
        o.insert("value".into(), v.clone());
        m.insert(k.clone(), Value::Object(o));
    }
    Value::Object(m).to_extended_json()
}
pub fn config_yaml(state: &RunState) -> String {
    upsert_config(state)
}
pub fn metadata_json(_state: &RunState) -> Option<String> {
    None
}
pub fn summary_json(state: &RunState) -> String {
    Value::Object(state.summary.clone()).to_extended_json()
}
