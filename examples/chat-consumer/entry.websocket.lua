-- Message-oriented: the script does no business logic. Every frame a user
-- sends goes to the "chat" topic; a backend worker consumes it (queue.pop)
-- and answers the sender with mesh.send.
function on_message(msg)
    local n, err = mix.queue.push("chat", msg.data)
    if err then
        -- No worker has kept up and the topic is full: tell the user.
        mix.websocket():send('{"error":"busy, try again"}')
    end
end
