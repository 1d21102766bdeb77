// rtgw.js: a small browser client for rtgw's native protocol (docs/protocol.md). No build step,
// no dependencies. It authenticates with a frame (never the URL), subscribes, and after any
// disconnect reconnects with backoff and resumes every subscription with `since`
// {offset, epoch}: missed events arrive from the topic's history, and duplicates are dropped
// by offset. When the gateway cannot resume (`recovered: false`, or a `gap`), `onReset` tells
// the application to refetch its state.
//
//   const client = new RtgwClient({url, token: () => fetchToken(), onState: (s) => ...});
//   client.subscribe("orders", {filter: "status=eq.paid"}, {
//     onEvent: (change, frame) => ..., onReset: (info) => ...,
//   });
//   client.connect();
"use strict";

class RtgwClient {
  constructor({url, token, onState = () => {}, onError = () => {},
               minDelayMs = 250, maxDelayMs = 10000} = {}) {
    this.url = url;
    this.token = token; // a string, or a (possibly async) function returning one
    this.onState = onState;
    this.onError = onError;
    this.minDelayMs = minDelayMs;
    this.maxDelayMs = maxDelayMs;
    this.state = "idle"; // idle | connecting | open | reconnecting | closed
    this.reconnects = 0;
    this.socket = null;
    this._subs = new Map(); // ref -> subscription
    this._nextRef = 1;
    this._delay = minDelayMs;
    this._timer = null;
  }

  subscribe(channel, {filter = null} = {}, {onEvent = () => {}, onReset = () => {},
                                            onSubscribed = () => {}} = {}) {
    const sub = {ref: String(this._nextRef++), channel, filter, topic: null,
                 offset: null, epoch: null, onEvent, onReset, onSubscribed};
    this._subs.set(sub.ref, sub);
    if (this.state === "open") this._sendSubscribe(sub);
    return sub;
  }

  connect() {
    if (this.state === "connecting" || this.state === "open") return;
    this._setState(this.reconnects ? "reconnecting" : "connecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = async () => {
      let token;
      try {
        token = typeof this.token === "function" ? await this.token() : this.token;
      } catch (err) {
        this.onError({code: "token_unavailable", message: String(err)});
        socket.close();
        return;
      }
      if (this.socket === socket) socket.send(JSON.stringify({type: "auth", token}));
    };
    socket.onmessage = (message) => this._onFrame(JSON.parse(message.data));
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.state === "closed") return;
      this._setState("reconnecting", {code: event.code, reason: event.reason});
      this.reconnects += 1;
      const wait = this._delay * (0.5 + Math.random() / 2);
      this._delay = Math.min(this._delay * 2, this.maxDelayMs);
      this._timer = setTimeout(() => { this.state = "idle"; this.connect(); }, wait);
    };
  }

  close() {
    this._setState("closed");
    clearTimeout(this._timer);
    if (this.socket) this.socket.close(1000);
    this.socket = null;
  }

  _setState(state, detail = {}) {
    this.state = state;
    this.onState(state, detail);
  }

  _sendSubscribe(sub) {
    const frame = {type: "subscribe", ref: sub.ref, channel: sub.channel};
    if (sub.filter) frame.filter = sub.filter;
    if (sub.epoch !== null) frame.since = {offset: sub.offset, epoch: sub.epoch};
    this.socket.send(JSON.stringify(frame));
  }

  _onFrame(frame) {
    switch (frame.type) {
      case "ready":
        this._delay = this.minDelayMs;
        this._setState("open", {connectionId: frame.connection_id});
        for (const sub of this._subs.values()) this._sendSubscribe(sub);
        break;
      case "subscribed": {
        const sub = this._subs.get(frame.ref);
        if (!sub) break;
        const resumed = frame.recovered === true;
        if (frame.recovered === false) {
          sub.onReset({reason: "not_recovered", topic: frame.topic});
        }
        sub.topic = frame.topic;
        if (!resumed) {
          sub.offset = frame.offset;
          sub.epoch = frame.epoch;
        }
        sub.onSubscribed({topic: frame.topic, resumed});
        break;
      }
      case "event": {
        const sub = this._byTopic(frame.topic);
        if (!sub) break;
        if (frame.epoch === sub.epoch && frame.offset <= sub.offset) break; // a duplicate
        sub.offset = frame.offset;
        sub.epoch = frame.epoch;
        sub.onEvent(frame.change, frame);
        break;
      }
      case "gap": {
        const sub = this._byTopic(frame.topic);
        if (!sub) break;
        sub.offset = frame.offset;
        sub.epoch = frame.epoch;
        sub.onReset({reason: frame.reason, topic: frame.topic});
        break;
      }
      case "error":
        this.onError(frame);
        break;
      default:
        break;
    }
  }

  _byTopic(topic) {
    for (const sub of this._subs.values()) if (sub.topic === topic) return sub;
    return null;
  }
}

window.RtgwClient = RtgwClient;
