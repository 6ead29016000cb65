//! `{path}.json`: the Atlassian Statuspage summary shape
//! (`/api/v2/summary.json`: `page`, `status`, `components`, `incidents`,
//! `scheduled_maintenances`), which status aggregators already parse.

use super::view::{PageData, fmt_month, rfc3339};
use serde_json::{Value, json};

pub fn summary(d: &PageData) -> Value {
    let (indicator, description) = d.overall();
    let updated = rfc3339(d.now_ms);
    let components: Vec<Value> = d
        .checks
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let at = c.updated_ms.map(rfc3339);
            json!({
                "id": c.id,
                "name": c.display_name,
                "status": c.state.component_status(),
                "description": c.state.words(),
                "position": n + 1,
                "created_at": at,
                "updated_at": at,
                "showcase": true,
                "start_date": null,
                "group_id": null,
                "page_id": "mailloop",
                "group": false,
                "only_show_if_degraded": false,
            })
        })
        .collect();
    let incidents: Vec<Value> = d
        .incidents
        .iter()
        .map(|i| {
            let component_status = d
                .checks
                .iter()
                .find(|c| c.id == i.check_id)
                .map(|c| c.state.component_status())
                .unwrap_or("degraded_performance");
            json!({
                "id": i.id.to_string(),
                "name": format!("{}: {}", i.display_name, i.headline),
                "status": i.status,
                "impact": i.impact,
                "created_at": rfc3339(i.opened_ms),
                "updated_at": rfc3339(i.updated_ms),
                "started_at": rfc3339(i.opened_ms),
                "monitoring_at": null,
                "resolved_at": i.resolved_ms.map(rfc3339),
                "shortlink": format!("{}/history/{}#i{}", d.path, fmt_month(i.opened_ms), i.id),
                "page_id": "mailloop",
                // Newest first, as Statuspage lists them.
                "incident_updates": i.timeline.iter().enumerate().rev().map(|(n, e)| json!({
                    "id": format!("{}-{}", i.id, n + 1),
                    "incident_id": i.id.to_string(),
                    "status": match e.label {
                        "Investigating" => "investigating",
                        "Identified" => "identified",
                        "Resolved" => "resolved",
                        _ => i.status,
                    },
                    "body": e.text,
                    "created_at": rfc3339(e.at_ms),
                    "updated_at": rfc3339(e.at_ms),
                    "display_at": rfc3339(e.at_ms),
                })).collect::<Vec<_>>(),
                "components": [{"id": i.check_id, "name": i.display_name, "status": component_status}],
            })
        })
        .collect();
    json!({
        "page": {
            "id": "mailloop",
            "name": d.title,
            "url": d.path,
            "time_zone": "Etc/UTC",
            "updated_at": updated,
        },
        "status": {"indicator": indicator, "description": description},
        "components": components,
        "incidents": incidents,
        "scheduled_maintenances": [],
    })
}
