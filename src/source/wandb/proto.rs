//! Our own prost definitions of the parts of `wandb_internal.Record` that
//! syncd reads. Field numbers are those of wandb's `wandb_internal.proto`
//! (unchanged from 0.16 to 0.31); fields we do not need are left out and
//! skipped by the decoder, so newer writers stay readable.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct Record {
    #[prost(int64, tag = "1")]
    pub num: i64,
    #[prost(
        oneof = "RecordType",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 18, 20, 21, 22, 23, 24, 25, 26, 27, 100"
    )]
    pub record_type: Option<RecordType>,
    #[prost(message, optional, tag = "200")]
    pub info: Option<RecordInfo>,
}

// One record is decoded at a time and dropped; boxing the large variants
// would cost an allocation per record for no memory gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RecordType {
    #[prost(message, tag = "2")]
    History(HistoryRecord),
    #[prost(message, tag = "3")]
    Summary(SummaryRecord),
    #[prost(message, tag = "4")]
    Output(OutputRecord),
    #[prost(message, tag = "5")]
    Config(ConfigRecord),
    #[prost(message, tag = "6")]
    Files(FilesRecord),
    #[prost(message, tag = "7")]
    Stats(StatsRecord),
    #[prost(message, tag = "8")]
    Artifact(ArtifactRecord),
    #[prost(message, tag = "9")]
    Tbrecord(TbRecord),
    #[prost(message, tag = "10")]
    Alert(AlertRecord),
    /// Kept as raw bytes: the uploader forwards telemetry by field number.
    #[prost(bytes, tag = "11")]
    Telemetry(Vec<u8>),
    /// Raw `MetricRecord`: forwarded to the server by field number, decoded
    /// with [`MetricRecord`] where syncd needs a field.
    #[prost(bytes, tag = "12")]
    Metric(Vec<u8>),
    #[prost(message, tag = "13")]
    OutputRaw(OutputRecord),
    #[prost(message, tag = "17")]
    Run(RunRecord),
    #[prost(message, tag = "18")]
    Exit(RunExitRecord),
    #[prost(message, tag = "20")]
    Final(Empty),
    #[prost(message, tag = "21")]
    Header(HeaderRecord),
    #[prost(message, tag = "22")]
    Footer(Empty),
    #[prost(message, tag = "23")]
    Preempting(Empty),
    #[prost(message, tag = "24")]
    NoopLinkArtifact(Empty),
    #[prost(message, tag = "25")]
    UseArtifact(UseArtifactRecord),
    /// Raw `EnvironmentRecord`: uploaded whole as `wandb-metadata.json`,
    /// decoded with [`EnvironmentRecord`] for the fields syncd reads.
    #[prost(bytes, tag = "26")]
    Environment(Vec<u8>),
    #[prost(message, tag = "27")]
    OutputLogger(OutputLoggerRecord),
    /// Never written to disk by wandb; tolerated if present.
    #[prost(bytes, tag = "100")]
    Request(Vec<u8>),
}

#[derive(Clone, PartialEq, Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, Message)]
pub struct RecordInfo {
    #[prost(string, tag = "1")]
    pub stream_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistoryRecord {
    #[prost(message, repeated, tag = "1")]
    pub item: Vec<HistoryItem>,
    #[prost(message, optional, tag = "2")]
    pub step: Option<HistoryStep>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistoryStep {
    #[prost(int64, tag = "1")]
    pub num: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct HistoryItem {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    /// 0.31's typed encoding (`x_history_value_encoding`); absent otherwise.
    #[prost(oneof = "TypedValue", tags = "3, 4, 5, 6, 7, 8")]
    pub typed: Option<TypedValue>,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum TypedValue {
    /// `google.protobuf.NullValue`, an enum with the single value 0.
    #[prost(int32, tag = "3")]
    None(i32),
    #[prost(bool, tag = "4")]
    Boolean(bool),
    #[prost(sint64, tag = "5")]
    Integer(i64),
    #[prost(double, tag = "6")]
    Number(f64),
    #[prost(string, tag = "7")]
    Text(String),
    #[prost(string, tag = "8")]
    Json(String),
}

/// `SummaryItem` and `ConfigItem` share this shape.
#[derive(Clone, PartialEq, Message)]
pub struct KeyedJson {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct SummaryRecord {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<KeyedJson>,
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<KeyedJson>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ConfigRecord {
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<KeyedJson>,
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<KeyedJson>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FilesRecord {
    #[prost(message, repeated, tag = "1")]
    pub files: Vec<FilesItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FilesItem {
    #[prost(string, tag = "1")]
    pub path: String,
    /// NOW = 0, END = 1, LIVE = 2.
    #[prost(int32, tag = "2")]
    pub policy: i32,
    /// OTHER = 0, WANDB = 1, MEDIA = 2, ARTIFACT = 3.
    #[prost(int32, tag = "3")]
    pub kind: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct StatsRecord {
    #[prost(int32, tag = "1")]
    pub stats_type: i32,
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Timestamp>,
    #[prost(message, repeated, tag = "3")]
    pub item: Vec<StatsItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StatsItem {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "16")]
    pub value_json: String,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn as_secs_f64(&self) -> f64 {
        self.seconds as f64 + f64::from(self.nanos) / 1e9
    }
}

/// `OutputRecord` (legacy) and `OutputRawRecord` share this shape.
#[derive(Clone, PartialEq, Message)]
pub struct OutputRecord {
    /// STDERR = 0, STDOUT = 1.
    #[prost(int32, tag = "1")]
    pub output_type: i32,
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "3")]
    pub line: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct OutputLoggerRecord {
    #[prost(string, tag = "1")]
    pub line: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ArtifactRecord {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub project: String,
    #[prost(string, tag = "3")]
    pub entity: String,
    #[prost(string, tag = "4")]
    pub kind: String,
    #[prost(string, tag = "5")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub digest: String,
    #[prost(string, tag = "7")]
    pub description: String,
    /// JSON text.
    #[prost(string, tag = "8")]
    pub metadata: String,
    #[prost(bool, tag = "9")]
    pub user_created: bool,
    #[prost(bool, tag = "10")]
    pub use_after_commit: bool,
    #[prost(string, repeated, tag = "11")]
    pub aliases: Vec<String>,
    #[prost(message, optional, tag = "12")]
    pub manifest: Option<ArtifactManifest>,
    #[prost(string, tag = "13")]
    pub distributed_id: String,
    #[prost(bool, tag = "14")]
    pub finalize: bool,
    #[prost(string, tag = "15")]
    pub client_id: String,
    #[prost(string, tag = "16")]
    pub sequence_client_id: String,
    #[prost(string, tag = "17")]
    pub base_id: String,
    #[prost(int64, tag = "18")]
    pub ttl_duration_seconds: i64,
    #[prost(string, repeated, tag = "19")]
    pub tags: Vec<String>,
    #[prost(bool, tag = "100")]
    pub incremental_beta1: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ArtifactManifest {
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(string, tag = "2")]
    pub storage_policy: String,
    #[prost(message, repeated, tag = "3")]
    pub storage_policy_config: Vec<KeyJson>,
    #[prost(message, repeated, tag = "4")]
    pub contents: Vec<ArtifactManifestEntry>,
    /// A gzipped JSON-lines file holding the entries of a manifest too big
    /// for the record (the writer's temporary file).
    #[prost(string, tag = "5")]
    pub manifest_file_path: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ArtifactManifestEntry {
    #[prost(string, tag = "1")]
    pub path: String,
    /// MD5, standard base64.
    #[prost(string, tag = "2")]
    pub digest: String,
    /// A reference (`s3://…`, `gs://…`, `file://…`): stored in the manifest only.
    #[prost(string, tag = "3")]
    pub reference: String,
    #[prost(int64, tag = "4")]
    pub size: i64,
    #[prost(string, tag = "6")]
    pub local_path: String,
    #[prost(string, tag = "7")]
    pub birth_artifact_id: String,
    #[prost(bool, tag = "8")]
    pub skip_cache: bool,
    #[prost(message, repeated, tag = "16")]
    pub extra: Vec<KeyJson>,
}

/// A key and a JSON text (`StoragePolicyConfigItem`, `ExtraItem`).
#[derive(Clone, PartialEq, Message)]
pub struct KeyJson {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value_json: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct UseArtifactRecord {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub kind: String,
    #[prost(string, tag = "3")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TbRecord {
    #[prost(string, tag = "1")]
    pub log_dir: String,
    #[prost(bool, tag = "2")]
    pub save: bool,
    #[prost(string, tag = "3")]
    pub root_dir: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AlertRecord {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(string, tag = "3")]
    pub level: String,
    #[prost(int64, tag = "4")]
    pub wait_duration: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MetricRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub glob_name: String,
    #[prost(string, tag = "4")]
    pub step_metric: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RunRecord {
    #[prost(string, tag = "1")]
    pub run_id: String,
    #[prost(string, tag = "2")]
    pub entity: String,
    #[prost(string, tag = "3")]
    pub project: String,
    #[prost(message, optional, tag = "4")]
    pub config: Option<ConfigRecord>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<SummaryRecord>,
    #[prost(string, tag = "6")]
    pub run_group: String,
    #[prost(string, tag = "7")]
    pub job_type: String,
    #[prost(string, tag = "8")]
    pub display_name: String,
    #[prost(string, tag = "9")]
    pub notes: String,
    #[prost(string, repeated, tag = "10")]
    pub tags: Vec<String>,
    #[prost(string, tag = "12")]
    pub sweep_id: String,
    #[prost(string, tag = "13")]
    pub host: String,
    #[prost(int64, tag = "14")]
    pub starting_step: i64,
    #[prost(string, tag = "16")]
    pub storage_id: String,
    #[prost(message, optional, tag = "17")]
    pub start_time: Option<Timestamp>,
    #[prost(bool, tag = "18")]
    pub resumed: bool,
    #[prost(int32, tag = "20")]
    pub runtime: i32,
    #[prost(message, optional, tag = "21")]
    pub git: Option<GitRepoRecord>,
    #[prost(bool, tag = "22")]
    pub forked: bool,
    /// 0.31+: the run was created with `resume=`.
    #[prost(bool, tag = "24")]
    pub resume: bool,
}

/// Serializes for `inspect --json`.
#[derive(Clone, PartialEq, Message, serde::Serialize)]
pub struct GitRepoRecord {
    #[prost(string, tag = "1")]
    pub remote_url: String,
    #[prost(string, tag = "2")]
    pub commit: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RunExitRecord {
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    #[prost(int32, tag = "2")]
    pub runtime: i32,
    #[prost(bool, tag = "3")]
    pub not_complete: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct HeaderRecord {
    #[prost(message, optional, tag = "1")]
    pub version_info: Option<VersionInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct VersionInfo {
    #[prost(string, tag = "1")]
    pub producer: String,
    #[prost(string, tag = "2")]
    pub min_consumer: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct EnvironmentRecord {
    #[prost(string, tag = "1")]
    pub os: String,
    #[prost(string, tag = "2")]
    pub python: String,
    #[prost(message, optional, tag = "3")]
    pub started_at: Option<Timestamp>,
    #[prost(string, repeated, tag = "5")]
    pub args: Vec<String>,
    #[prost(string, tag = "6")]
    pub program: String,
    #[prost(string, tag = "7")]
    pub code_path: String,
    #[prost(message, optional, tag = "9")]
    pub git: Option<GitRepoRecord>,
    #[prost(string, tag = "11")]
    pub root: String,
    #[prost(string, tag = "12")]
    pub host: String,
    #[prost(string, tag = "13")]
    pub username: String,
    #[prost(string, tag = "14")]
    pub executable: String,
    #[prost(map = "string, string", tag = "27")]
    pub slurm: std::collections::HashMap<String, String>,
    #[prost(string, tag = "199")]
    pub writer_id: String,
}

/// The type of a record, taken from its `record_type` field number without
/// decoding the rest (see [`super::record::peek`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    History,
    Summary,
    Output,
    Config,
    Files,
    Stats,
    Artifact,
    Tbrecord,
    Alert,
    Telemetry,
    Metric,
    OutputRaw,
    Run,
    Exit,
    Final,
    Header,
    Footer,
    Preempting,
    NoopLinkArtifact,
    UseArtifact,
    Environment,
    OutputLogger,
    Request,
    /// A record with no `record_type` set (e.g. control-only records).
    None,
}

impl RecordKind {
    pub fn from_field(field: u32) -> Option<RecordKind> {
        use RecordKind::*;
        Some(match field {
            2 => History,
            3 => Summary,
            4 => Output,
            5 => Config,
            6 => Files,
            7 => Stats,
            8 => Artifact,
            9 => Tbrecord,
            10 => Alert,
            11 => Telemetry,
            12 => Metric,
            13 => OutputRaw,
            17 => Run,
            18 => Exit,
            20 => Final,
            21 => Header,
            22 => Footer,
            23 => Preempting,
            24 => NoopLinkArtifact,
            25 => UseArtifact,
            26 => Environment,
            27 => OutputLogger,
            100 => Request,
            _ => return Option::None,
        })
    }

    /// The name wandb's proto gives the field (`output_raw`, `use_artifact`, …).
    pub fn name(self) -> &'static str {
        use RecordKind::*;
        match self {
            History => "history",
            Summary => "summary",
            Output => "output",
            Config => "config",
            Files => "files",
            Stats => "stats",
            Artifact => "artifact",
            Tbrecord => "tbrecord",
            Alert => "alert",
            Telemetry => "telemetry",
            Metric => "metric",
            OutputRaw => "output_raw",
            Run => "run",
            Exit => "exit",
            Final => "final",
            Header => "header",
            Footer => "footer",
            Preempting => "preempting",
            NoopLinkArtifact => "noop_link_artifact",
            UseArtifact => "use_artifact",
            Environment => "environment",
            OutputLogger => "output_logger",
            Request => "request",
            None => "none",
        }
    }
}

impl Record {
    pub fn decode_payload(payload: &[u8]) -> Result<Record, prost::DecodeError> {
        Record::decode(payload)
    }
}
