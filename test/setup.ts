import { setDefaultTimeout } from "bun:test";

// Integration tests open real databases and spawn the CLI; a PGlite start alone can take seconds.
setDefaultTimeout(60_000);
