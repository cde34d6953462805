// The one error type of the site's modules: a problem with the site, the browser or a request; its message says
// what to do.

/** A problem with the site, the browser or a request; its message says what to do. */
export class SiteError extends Error {}
