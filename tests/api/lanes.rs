//! The metadata lanes set their connections to plan the batch statement
//! once; a connection a lane hands back to the pool carries none of that
//! into anyone else's queries.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::TestApp;

#[sqlx::test]
async fn a_lane_hands_its_connection_back_as_the_pool_gave_it(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.create_room("lobby", json!({})).await;
    for n in 0..3 {
        app.patch_room("lobby", json!({"n": n})).await;
    }
    // Past the lanes' linger: their connections are back in the pool.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut held = Vec::new();
    for _ in 0..app.state.db.size() {
        held.push(app.state.db.acquire().await.unwrap());
    }
    for conn in &mut held {
        let mode: String = sqlx::query_scalar("show plan_cache_mode")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(mode, "auto");
    }
}
