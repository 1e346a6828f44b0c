//! Custom domains and the TLS certificates the routers serve.

use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Cert, Domain};
use crate::store::StoreError;

use super::apps::{app_by_id, app_by_name, rows_of};
use super::rows::{cert_from_row, domain_from_row, timestamp, to_json};
use super::SqlStore;

/// Domains with their app's name.
const DOMAINS: &str =
    "SELECT domains.*, apps.name AS app FROM domains JOIN apps ON apps.id = domains.app_id";

pub(super) async fn add_domain(
    store: &SqlStore,
    app: &str,
    hostname: &str,
) -> Result<Domain, StoreError> {
    let mut tx = store.write().await?;
    let app_row = app_by_name(&mut tx, app).await?;
    let taken = sqlx::query("SELECT app_id FROM domains WHERE hostname = $1")
        .bind(hostname)
        .fetch_optional(&mut *tx)
        .await?;
    if let Some(row) = taken {
        let owner: String = sqlx::Row::try_get(&row, "app_id")?;
        let owner = Uuid::parse_str(&owner)
            .map_err(|e| StoreError::Corrupt(format!("domains.app_id of {hostname}: {e}")))?;
        return Err(StoreError::DomainTaken {
            hostname: hostname.to_owned(),
            app: app_by_id(&mut tx, owner).await?.name,
        });
    }
    let domain = Domain {
        hostname: hostname.to_owned(),
        app_id: app_row.id,
        app: app_row.name,
        created_at: OffsetDateTime::now_utc(),
    };
    sqlx::query("INSERT INTO domains (hostname, app_id, created_at) VALUES ($1, $2, $3)")
        .bind(&domain.hostname)
        .bind(domain.app_id.to_string())
        .bind(timestamp(domain.created_at)?)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(domain)
}

pub(super) async fn remove_domain(
    store: &SqlStore,
    app: &str,
    hostname: &str,
) -> Result<Domain, StoreError> {
    let mut tx = store.write().await?;
    let app_row = app_by_name(&mut tx, app).await?;
    let row = sqlx::query(&format!(
        "{DOMAINS} WHERE domains.app_id = $1 AND domains.hostname = $2"
    ))
    .bind(app_row.id.to_string())
    .bind(hostname)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| StoreError::DomainNotFound {
        app: app.to_owned(),
        hostname: hostname.to_owned(),
    })?;
    let domain = domain_from_row(&row)?;
    sqlx::query("DELETE FROM domains WHERE hostname = $1")
        .bind(&domain.hostname)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(domain)
}

pub(super) async fn domains(
    store: &SqlStore,
    app: Option<&str>,
) -> Result<Vec<Domain>, StoreError> {
    let mut tx = store.read().await?;
    let rows = rows_of(
        &mut tx,
        app,
        &format!("{DOMAINS} WHERE domains.app_id = $1 ORDER BY domains.hostname"),
        &format!("{DOMAINS} ORDER BY domains.hostname"),
    )
    .await?;
    tx.commit().await?;
    rows.iter().map(domain_from_row).collect()
}

pub(super) async fn save_cert(store: &SqlStore, cert: &Cert) -> Result<(), StoreError> {
    let mut tx = store.write().await?;
    let material = cert.material.as_ref();
    let time = |t: Option<OffsetDateTime>| t.map(timestamp).transpose();
    sqlx::query(
        "INSERT INTO certs (id, app_id, source, names, chain_pem, key_pem, issuer,
             not_before, not_after, status, last_error, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (id) DO UPDATE
         SET app_id = excluded.app_id, source = excluded.source, names = excluded.names,
             chain_pem = excluded.chain_pem, key_pem = excluded.key_pem,
             issuer = excluded.issuer, not_before = excluded.not_before,
             not_after = excluded.not_after, status = excluded.status,
             last_error = excluded.last_error, created_at = excluded.created_at,
             updated_at = excluded.updated_at",
    )
    .bind(cert.id.to_string())
    .bind(cert.app_id.map(|id| id.to_string()))
    .bind(cert.source.as_str())
    .bind(to_json(&cert.names)?)
    .bind(material.map(|m| m.chain_pem.as_str()))
    .bind(material.map(|m| m.key_pem.as_str()))
    .bind(material.map(|m| m.issuer.as_str()))
    .bind(time(material.map(|m| m.not_before))?)
    .bind(time(material.map(|m| m.not_after))?)
    .bind(cert.status.as_str())
    .bind(cert.last_error.as_deref())
    .bind(timestamp(cert.created_at)?)
    .bind(timestamp(cert.updated_at)?)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn remove_cert(store: &SqlStore, app: &str, id: Uuid) -> Result<Cert, StoreError> {
    let mut tx = store.write().await?;
    let app_row = app_by_name(&mut tx, app).await?;
    let row = sqlx::query("SELECT * FROM certs WHERE app_id = $1 AND id = $2")
        .bind(app_row.id.to_string())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::CertNotFound {
            app: app.to_owned(),
            id,
        })?;
    let cert = cert_from_row(&row)?;
    sqlx::query("DELETE FROM certs WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(cert)
}

pub(super) async fn certs(store: &SqlStore, app: Option<&str>) -> Result<Vec<Cert>, StoreError> {
    let mut tx = store.read().await?;
    let rows = rows_of(
        &mut tx,
        app,
        "SELECT * FROM certs WHERE app_id = $1 ORDER BY created_at, id",
        "SELECT * FROM certs ORDER BY created_at, id",
    )
    .await?;
    tx.commit().await?;
    rows.iter().map(cert_from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CertMaterial, CertSource, CertStatus};
    use crate::store::sql::test_support::*;

    fn cert(app_id: Option<Uuid>, source: CertSource, material: bool) -> Cert {
        let now = OffsetDateTime::now_utc();
        Cert {
            id: Uuid::new_v4(),
            app_id,
            source,
            names: vec!["www.example.com".into()],
            material: material.then(|| CertMaterial {
                chain_pem: "CHAIN".into(),
                key_pem: "KEY".into(),
                issuer: "CN=test".into(),
                not_before: now,
                not_after: now + time::Duration::days(90),
            }),
            status: if material {
                CertStatus::Active
            } else {
                CertStatus::Pending
            },
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn domains_belong_to_one_app_and_go_with_it() {
        on_each_backend(
            "domains_belong_to_one_app_and_go_with_it",
            |db| async move {
                let store = db.open().await;
                store.create_app("web", "testing").await.expect("create");
                store.create_app("other", "testing").await.expect("create");
                let d = store
                    .add_domain("web", "www.example.com")
                    .await
                    .expect("add");
                assert_eq!(d.app, "web");
                let taken = store.add_domain("other", "www.example.com").await;
                match taken {
                    Err(StoreError::DomainTaken { app, .. }) => assert_eq!(app, "web"),
                    other => panic!("{other:?}"),
                }
                let again = store.add_domain("web", "www.example.com").await;
                assert!(matches!(again, Err(StoreError::DomainTaken { .. })));
                let missing = store.remove_domain("other", "www.example.com").await;
                assert!(matches!(missing, Err(StoreError::DomainNotFound { .. })));
                store
                    .add_domain("web", "api.example.com")
                    .await
                    .expect("add");
                let names: Vec<String> = store
                    .domains(None)
                    .await
                    .expect("all")
                    .into_iter()
                    .map(|d| d.hostname)
                    .collect();
                assert_eq!(names, ["api.example.com", "www.example.com"]);
                store
                    .remove_domain("web", "api.example.com")
                    .await
                    .expect("remove");
                store.delete_app("web").await.expect("delete");
                assert!(store.domains(None).await.expect("all").is_empty());
            },
        )
        .await;
    }

    #[tokio::test]
    async fn certs_are_kept_replaced_and_removed() {
        on_each_backend("certs_are_kept_replaced_and_removed", |db| async move {
            let store = db.open().await;
            let app = store.create_app("web", "testing").await.expect("create");
            let default = cert(None, CertSource::Default, true);
            let mut acme = cert(Some(app.id), CertSource::Acme, false);
            store.save_cert(&default).await.expect("default");
            store.save_cert(&acme).await.expect("pending acme");
            acme.status = CertStatus::Failed;
            acme.last_error = Some("no answer to the challenge".into());
            store.save_cert(&acme).await.expect("replaced");
            let mine = store.certs(Some("web")).await.expect("certs");
            assert_eq!(mine, [acme.clone()]);
            assert_eq!(store.certs(None).await.expect("all").len(), 2);
            let gone = store.remove_cert("web", default.id).await;
            assert!(
                matches!(gone, Err(StoreError::CertNotFound { .. })),
                "not the app's: {gone:?}"
            );
            assert_eq!(store.remove_cert("web", acme.id).await.expect("rm"), acme);
            store.set_maintenance("web", true).await.expect("on");
            assert!(store.app("web").await.expect("app").maintenance);
        })
        .await;
    }
}
