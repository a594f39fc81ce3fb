-- The embedding example's script: a client sends a channel name and is
-- subscribed to it; the Python program publishes to "news".
function on_message(msg)
    local conn = mix.websocket()
    conn:subscribe(msg["data"])
    conn:send("subscribed " .. msg["data"])
end
