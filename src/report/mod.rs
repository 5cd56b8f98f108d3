//! The report use case: the most requested URLs, and (when configured) one Elasticsearch document
//! per report.
use crate::domain::UrlStats;
use crate::elastic::Reporter;
use crate::error::ApiError;
use crate::storage::Stats;

/// How many URLs the report lists.
pub const TOP_N: usize = 10;

/// Handle to the report service. Cheap to clone.
#[derive(Clone)]
pub struct ReportService {
    stats: Stats,
    /// Set when Elasticsearch reporting is configured.
    reporter: Option<Reporter>,
}

impl ReportService {
    pub fn new(stats: Stats, reporter: Option<Reporter>) -> Self {
        Self { stats, reporter }
    }

    /// The top [`TOP_N`] URLs. The Elasticsearch document is queued before returning; whatever
    /// goes wrong with it is logged, never answered: monitoring must not break the report.
    pub async fn report(&self) -> Result<Vec<UrlStats>, ApiError> {
        let entries = self.stats.top(TOP_N).await?;
        if let Some(reporter) = &self.reporter {
            self.queue_document(reporter, &entries).await;
        }
        Ok(entries)
    }

    /// Writes the report's document to the outbox (a redb commit, or a Redis script in Redis
    /// mode; never a call to Elasticsearch); the sender task delivers it.
    async fn queue_document(&self, reporter: &Reporter, entries: &[UrlStats]) {
        let totals = match self.stats.totals().await {
            Ok(totals) => totals,
            Err(e) => {
                tracing::warn!(error = %e, "report document not queued: totals unavailable");
                return;
            }
        };
        let document = reporter.document(entries.to_vec(), &totals);
        if let Err(e) = reporter.enqueue(&document).await {
            tracing::warn!(error = %e, "report document not queued");
        }
    }
}
