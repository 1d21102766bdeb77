// Drives Supabase's realtime-js (unchanged) for tests/integration/test_realtime_js.py.
// Commands arrive as JSON lines on stdin; everything the client sees leaves as JSON lines on
// stdout. Node 20 needs --experimental-websocket for the global WebSocket realtime-js uses.
import { createRequire } from 'node:module'
import { createInterface } from 'node:readline'

const require = createRequire(import.meta.url)
const { RealtimeClient } = require('@supabase/realtime-js')

const [url, apikey] = process.argv.slice(2)
const client = new RealtimeClient(url, { params: { apikey }, heartbeatIntervalMs: 5000 })
const channels = new Map()
const say = (message) => process.stdout.write(JSON.stringify(message) + '\n')

const commands = {
  async auth({ token }) {
    await client.setAuth(token)
  },
  subscribe({ name, bindings }) {
    const channel = client.channel(name)
    for (const binding of bindings) {
      channel.on('postgres_changes', binding, (payload) => say({ type: 'change', channel: name, payload }))
    }
    channel.on('system', {}, (payload) => say({ type: 'system', channel: name, payload }))
    channel.subscribe((status, error) =>
      say({
        type: 'status', channel: name, status, error: error ? String(error.message) : null,
        // a server's phx_error payload ({reason}) travels as the error's cause
        reason: typeof error?.cause?.reason === 'string' ? error.cause.reason : null,
      }),
    )
    channels.set(name, channel)
  },
  async broadcast({ name, event }) {
    const result = await channels.get(name).send({ type: 'broadcast', event, payload: { hi: 1 } })
    say({ type: 'sent', channel: name, result })
  },
  async leave({ name }) {
    const result = await channels.get(name).unsubscribe()
    say({ type: 'left', channel: name, result })
  },
  async remove({ name }) {
    await client.removeChannel(channels.get(name))
    channels.delete(name)
  },
  async quit() {
    await client.removeAllChannels()
    client.disconnect()
    process.exit(0)
  },
}

for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line)
  try {
    await commands[command.cmd](command)
    say({ type: 'done', cmd: command.cmd })
  } catch (error) {
    say({ type: 'failed', cmd: command.cmd, error: String(error) })
  }
}
