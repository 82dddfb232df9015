//! rmcp, the official Rust SDK, as a client of Warden's gateway over streamable HTTP: the
//! handshake, a listing, a call whose `_meta` passes through, an unknown tool's error, and
//! a `tools/list_changed` notification reaching the client's handler.

use std::time::Duration;

use rmcp::ServiceExt as _;
use rmcp::handler::client::ClientHandler;
use rmcp::model::{CallToolRequestParams, ClientConfig};
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use serde_json::json;
use tokio::sync::mpsc;

use super::supervision::fixture;
use crate::support::mcp::{EventStream, admin_token, event};
use crate::support::{TestDb, rt, warden};

const WAIT: Duration = Duration::from_secs(60);

/// Reports `tools/list_changed` on a channel.
#[derive(Clone)]
struct Listener {
    changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Listener {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::default()
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        let _ = self.changed.send(());
    }
}

#[test]
fn rmcp_client_lists_calls_and_hears_list_changes() {
    let db = TestDb::new();
    let mut profile = warden::Profile::with_database(db.url());
    profile.set(
        "servers",
        json!({ "fix": fixture(&format!("rmcp-{}", std::process::id()), &["--page-size", "4"]) }),
    );
    let process = profile.start();
    let token = admin_token(&process, &profile.state_dir());
    let mut events = EventStream::open(&process, &token);
    if !process.log().contains("server ready") {
        events.wait_for(WAIT, event("ready", "fix"));
    }
    let url = process.url("/mcp");
    rt::block_on(async move {
        let http = warden_actors::upstream::http::client_builder()
            .build()
            .expect("a client");
        let config = StreamableHttpClientTransportConfig::with_uri(url).auth_header(token);
        let transport = StreamableHttpClientTransport::with_client(http, config);
        let (changed, mut heard) = mpsc::unbounded_channel();
        let client = Listener { changed }
            .serve(transport)
            .await
            .expect("the rmcp client connects");
        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        assert!(names.contains(&"fix__echo".to_owned()), "{names:?}");
        // The upstream pages its listing (--page-size 4): Warden followed every page.
        assert!(names.len() >= 15, "{names:?}");

        let arguments = json!({"message": "from rmcp"})
            .as_object()
            .cloned()
            .expect("an object");
        let result = client
            .call_tool(CallToolRequestParams::new("fix__echo").with_arguments(arguments))
            .await
            .expect("tools/call");
        let text = serde_json::to_value(&result.content).expect("content serialises");
        assert_eq!(text[0]["text"], "from rmcp", "{text}");

        let unknown = client
            .call_tool(CallToolRequestParams::new("fix__nope"))
            .await;
        let message = format!("{:?}", unknown.expect_err("an unknown tool is an error"));
        assert!(message.contains("fix__nope"), "{message}");

        client
            .call_tool(CallToolRequestParams::new("fix__mutate_tools"))
            .await
            .expect("tools/call mutate_tools");
        tokio::time::timeout(WAIT, heard.recv())
            .await
            .expect("tools/list_changed reached the rmcp client in time")
            .expect("the handler is alive");
        let _ = client.cancel().await;
    });
}
