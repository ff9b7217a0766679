//! The app's frame: the header, the page chosen by the URL's fragment
//! (`#/contribute`, `#/console`, `#/network`), and the tab's scout, which belongs
//! to the app rather than to a page so it keeps drafting while the person is
//! elsewhere in it.

use leptos::prelude::*;

use crate::console::Console;
use crate::contribute::{Contribute, Scout};
use crate::network::Network;
use scout_wasm::browser::node::Phase;

/// A page of the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Contribute,
    Console,
    Network,
}

impl Page {
    const ALL: [Page; 3] = [Page::Contribute, Page::Console, Page::Network];

    /// The page a fragment names; anything else is the first page.
    fn from_fragment(fragment: &str) -> Self {
        match fragment.trim_start_matches('#').trim_start_matches('/') {
            "console" => Page::Console,
            "network" => Page::Network,
            _ => Page::Contribute,
        }
    }

    fn href(self) -> &'static str {
        match self {
            Page::Contribute => "#/contribute",
            Page::Console => "#/console",
            Page::Network => "#/network",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Page::Contribute => "Contribute",
            Page::Console => "Console",
            Page::Network => "Network",
        }
    }
}

fn current_page() -> Page {
    let fragment = window().location().hash().unwrap_or_default();
    Page::from_fragment(&fragment)
}

/// The whole app.
#[component]
pub(crate) fn App() -> impl IntoView {
    provide_context(Scout::new());
    let page = RwSignal::new(current_page());
    // The app lives as long as the tab: the listener is never removed.
    let _listener = window_event_listener(leptos::ev::hashchange, move |_| {
        page.set(current_page());
    });
    Effect::new(move || {
        document().set_title(&format!("{} · Shard", page.get().title()));
    });
    let links = Page::ALL
        .into_iter()
        .map(|p| {
            view! {
                <a
                    href=p.href()
                    data-testid=format!("nav-{}", p.title().to_lowercase())
                    aria-current=move || (page.get() == p).then_some("page")
                >
                    {p.title()}
                </a>
            }
        })
        .collect_view();
    view! {
        <header class="top">
            <a class="brand" href="#/contribute">"Shard"</a>
            <nav aria-label="Pages">{links}</nav>
            <ScoutBadge />
        </header>
        <main>
            {move || match page.get() {
                Page::Contribute => view! { <Contribute /> }.into_any(),
                Page::Console => view! { <Console /> }.into_any(),
                Page::Network => view! { <Network /> }.into_any(),
            }}
        </main>
    }
}

/// A small reminder in the header, on every page, that this tab is a scout.
#[component]
fn ScoutBadge() -> impl IntoView {
    let scout = expect_context::<Scout>();
    move || {
        scout.running().then(|| {
            let phase = scout.state.with(|s| s.as_ref().map(|s| s.phase));
            // A running scout that cannot draft says so, here too.
            let (label, class) = match phase {
                Some(Phase::Banned) => ("Banned", "badge bad"),
                Some(Phase::Refused) => ("Refused", "badge bad"),
                Some(Phase::Unreachable) => ("Oracle unreachable", "badge bad"),
                _ => ("Contributing", "badge"),
            };
            view! {
                <a class=class href="#/contribute" data-testid="scout-badge">
                    {label}
                </a>
            }
        })
    }
}
