// raps browser client: follow a task served by a raps daemon until it is done.
//
// A dependency-free ES module, served by raps at /static/raps.js:
//
//   import { watchTask } from "/static/raps.js";
//   watchTask("", "demo1", { onUpdate, onDone, onError, signal });
//
// It streams with EventSource (GET /task/<id>?stream) where the browser has
// it, and otherwise sends one GET /task/<id>?watch after another. The README
// describes the callbacks and the errors.

// Errors after which following the task again cannot succeed: another tab or
// client took the task over (killed), or the request itself is wrong.
const FINAL_ERRORS = new Set([
  "killed",
  "invalid_task_id",
  "invalid_mode",
  "method_not_allowed",
]);

// Delay before the next attempt after an error, in milliseconds: doubled after
// each error in a row, up to the maximum, and reset by each state received.
const FIRST_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30000;

/**
 * Follow a task until its state has "status": "done".
 *
 * @param {string} baseUrl - URL of the raps daemon without the trailing
 *   slash, such as "https://example.com/raps", or "" for the page's origin.
 * @param {string} taskId - the task id; it is percent-encoded into the path.
 * @param {object} [options]
 * @param {function(object): void} [options.onUpdate] - called with each state
 *   that is not done, the current one first. It can be called twice with the
 *   same state, for example after a reconnect.
 * @param {function(object): void} [options.onDone] - called once with the
 *   final state; a failed task has "failed": true in it.
 * @param {function(object): void} [options.onError] - called with each error:
 *   {status: "error", error, error_message, httpStatus, retrying}. With
 *   retrying true the client tries again by itself; with false it has stopped.
 * @param {AbortSignal} [options.signal] - stops following the task.
 * @param {boolean} [options.forceLongPoll] - use watch requests even where the
 *   browser has EventSource.
 * @returns {Promise<object|null>} the final state, or null when the signal
 *   aborted or an error that onError got with retrying false ended it. It
 *   never rejects.
 */
export function watchTask(baseUrl, taskId, options) {
  const settings = options || {};
  const follower = new TaskFollower(
    String(baseUrl).replace(/\/+$/, "") +
      "/task/" +
      encodeURIComponent(String(taskId)),
    settings,
  );
  if (follower.aborted()) {
    return Promise.resolve(null);
  }
  const hasEventSource = typeof globalThis.EventSource === "function";
  if (hasEventSource && !settings.forceLongPoll) {
    return follower.stream();
  }
  return follower.longPoll(true);
}

/**
 * Turn a decoded response body or event into one of
 * {state, done} or {error}.
 *
 * An update or done message with a data field carries the state in it, as
 * raps relays inline messages as they were published.
 */
export function classifyBody(body) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    const message = "The response is not a JSON object";
    return { error: makeError("invalid_response", message) };
  }
  if (body.status === "error") {
    return { error: body };
  }
  const isMessage = body.status === "update" || body.status === "done";
  if (isMessage && Object.prototype.hasOwnProperty.call(body, "data")) {
    const state = body.data;
    const stateDone =
      state !== null && typeof state === "object" && state.status === "done";
    return { state: state, done: body.status === "done" || stateDone };
  }
  return { state: body, done: body.status === "done" };
}

/**
 * Decode a response body: JSON after the heartbeat newlines that a watch
 * writes while it waits.
 */
export function parseBody(text) {
  const trimmed = String(text).trim();
  if (trimmed === "") {
    return { error: makeError("invalid_response", "The response body is empty") };
  }
  let body;
  try {
    body = JSON.parse(trimmed);
  } catch (error) {
    const message = "The response is not JSON: " + error.message;
    return { error: makeError("invalid_response", message) };
  }
  return classifyBody(body);
}

function makeError(code, message) {
  return { status: "error", error: code, error_message: message };
}

function sleep(milliseconds, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(done, milliseconds);
    function done() {
      clearTimeout(timer);
      if (signal) {
        signal.removeEventListener("abort", done);
      }
      resolve();
    }
    if (signal) {
      signal.addEventListener("abort", done);
    }
  });
}

class TaskFollower {
  constructor(url, settings) {
    this.url = url;
    this.signal = settings.signal || null;
    this.onUpdate = settings.onUpdate;
    this.onDone = settings.onDone;
    this.onError = settings.onError;
    this.backoff = FIRST_BACKOFF_MS;
  }

  aborted() {
    return this.signal !== null && this.signal.aborted;
  }

  // Call a callback of the caller. An exception in it is rethrown outside of
  // the follower, so that it shows in the console without stopping it.
  emit(callback, value) {
    if (typeof callback !== "function" || this.aborted()) {
      return;
    }
    try {
      callback(value);
    } catch (error) {
      setTimeout(() => {
        throw error;
      }, 0);
    }
  }

  // Report an error; return true when it ends following the task.
  reportError(error, httpStatus) {
    const final = FINAL_ERRORS.has(error.error);
    const reported = Object.assign({}, error, {
      status: "error",
      httpStatus: httpStatus === undefined ? null : httpStatus,
      retrying: !final,
    });
    this.emit(this.onError, reported);
    return final;
  }

  nextBackoff() {
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    return delay;
  }

  // Send one GET and decode its response into {state, done}, {error,
  // httpStatus} or {aborted: true}.
  async request(url) {
    let response;
    let text;
    try {
      response = await fetch(url, {
        signal: this.signal || undefined,
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
      text = await response.text();
    } catch (error) {
      if (this.aborted()) {
        return { aborted: true };
      }
      const message = "The request failed: " + error.message;
      return { error: makeError("network_error", message) };
    }
    const outcome = parseBody(text);
    if (outcome.error) {
      outcome.httpStatus = response.status;
    } else if (!response.ok) {
      const message =
        "HTTP status " + response.status + " with a body that is not an error";
      return {
        error: makeError("invalid_response", message),
        httpStatus: response.status,
      };
    }
    return outcome;
  }

  // Follow the task with watch requests. The first request is a poll when
  // `poll` is true, and so is the first after an error, so that the current
  // state comes at once instead of after the next change.
  // NOTE: an update published between two requests is not seen. The final
  // state always is, because a watch of a done task returns at once.
  async longPoll(poll) {
    let needPoll = poll;
    while (!this.aborted()) {
      const outcome = await this.request(needPoll ? this.url : this.url + "?watch");
      if (outcome.aborted || this.aborted()) {
        return null;
      }
      if (outcome.error) {
        if (this.reportError(outcome.error, outcome.httpStatus)) {
          return null;
        }
        await sleep(this.nextBackoff(), this.signal);
        needPoll = true;
        continue;
      }
      this.backoff = FIRST_BACKOFF_MS;
      if (outcome.done) {
        this.emit(this.onDone, outcome.state);
        return outcome.state;
      }
      this.emit(this.onUpdate, outcome.state);
      needPoll = false;
    }
    return null;
  }

  // Follow the task with an EventSource on ?stream. EventSource reconnects by
  // itself after a lost connection, and the first event of each stream is the
  // current state, so a reconnect misses no final state.
  stream() {
    return new Promise((resolve) => {
      let source = null;
      let finished = false;
      // Set after a retryable error event: raps closes the stream after it,
      // and the reconnect that follows is expected.
      let reconnectExpected = false;

      const finish = (result) => {
        if (finished) {
          return;
        }
        finished = true;
        if (source !== null) {
          source.close();
          source = null;
        }
        if (this.signal) {
          this.signal.removeEventListener("abort", onAbort);
        }
        resolve(result);
      };
      const onAbort = () => finish(null);

      const handleOutcome = (outcome, forceDone) => {
        if (outcome.error) {
          if (this.reportError(outcome.error, 200)) {
            finish(null);
          }
          return;
        }
        this.backoff = FIRST_BACKOFF_MS;
        reconnectExpected = false;
        if (forceDone || outcome.done) {
          this.emit(this.onDone, outcome.state);
          finish(outcome.state);
          return;
        }
        this.emit(this.onUpdate, outcome.state);
      };

      const onErrorEvent = (event) => {
        if (finished) {
          return;
        }
        // raps sends its errors as events named "error" with the error JSON
        // as data; EventSource reports its own failures as plain "error"
        // events without data.
        if (typeof event.data === "string") {
          reconnectExpected = true;
          handleOutcome(parseBody(event.data), false);
          return;
        }
        if (source.readyState !== EventSource.CLOSED) {
          // A lost connection: EventSource reconnects by itself after the
          // delay of the stream's retry hint.
          if (!reconnectExpected) {
            const message = "The stream was interrupted, reconnecting";
            this.reportError(makeError("network_error", message));
          }
          reconnectExpected = false;
          return;
        }
        // The response was not a 200 event stream, such as the 404 of a
        // missing task. EventSource gives up and cannot tell why, so a poll
        // fetches the error JSON.
        source.close();
        source = null;
        recover();
      };

      const recover = async () => {
        const outcome = await this.request(this.url);
        if (finished || outcome.aborted || this.aborted()) {
          finish(null);
          return;
        }

        if (outcome.error) {
          if (this.reportError(outcome.error, outcome.httpStatus)) {
            finish(null);
            return;
          }
          await sleep(this.nextBackoff(), this.signal);
          if (!this.aborted()) {
            open();
          }
          return;
        }

        if (outcome.done) {
          this.emit(this.onDone, outcome.state);
          finish(outcome.state);
          return;
        }

        // The task can be read but not streamed, for example through a proxy
        // that rejects event streams or from a raps without ?stream: go on
        // with watch requests.
        const message =
          "The stream request failed, following the task with watch requests";
        this.reportError(makeError("stream_failed", message));
        this.emit(this.onUpdate, outcome.state);
        if (this.signal) {
          this.signal.removeEventListener("abort", onAbort);
        }
        finished = true;
        resolve(this.longPoll(false));
      };

      const open = () => {
        if (finished) {
          return;
        }
        source = new EventSource(this.url + "?stream");
        source.addEventListener("update", (event) => {
          if (!finished) {
            handleOutcome(parseBody(event.data), false);
          }
        });
        source.addEventListener("done", (event) => {
          if (!finished) {
            handleOutcome(parseBody(event.data), true);
          }
        });
        source.addEventListener("error", onErrorEvent);
      };

      if (this.signal) {
        this.signal.addEventListener("abort", onAbort);
      }
      open();
    });
  }
}
