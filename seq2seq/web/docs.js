// /docs: the endpoints of /openapi.json with their fields and a curl example (no Swagger UI: it loads
// its scripts from a CDN, and this page must work offline).
"use strict";

function schemaOf(spec, reference) {
  return reference && reference.$ref ? spec.components.schemas[reference.$ref.split("/").pop()] : reference;
}

function typeName(spec, property) {
  if (property.$ref) return property.$ref.split("/").pop();
  if (property.anyOf) return property.anyOf.map((p) => typeName(spec, p)).join(" | ");
  if (property.enum) return property.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (property.type === "array") return "list of " + typeName(spec, property.items || {});
  return property.type || "any";
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function fieldsTable(spec, schema) {
  const table = element("table");
  const required = new Set(schema.required || []);
  for (const [name, property] of Object.entries(schema.properties || {})) {
    const row = table.insertRow();
    row.insertCell().append(element("code", name + (required.has(name) ? "" : "?")));
    row.insertCell().textContent = typeName(spec, property);
    row.insertCell().textContent = property.description || "";
  }
  return table;
}

function example(method, path) {
  const origin = window.location.origin;
  const key = " -H 'Authorization: Bearer KEY'"; // only with --api-key; harmless otherwise
  if (method === "get") return "curl " + origin + path + key;
  const body = path.endsWith("/translate") ? { text: "Y dijo Dios: Sea la luz.", beam: 5 } :
    { source: "Y dijo Dios: Sea la luz.", target: "And God said, Let there be light." };
  return "curl -X POST " + origin + path + key + " -H 'Content-Type: application/json' -d '" +
    JSON.stringify(body) + "'";
}

async function showEndpoints() {
  const section = document.getElementById("endpoints");
  const response = await fetch("/openapi.json");
  if (!response.ok) {
    section.textContent = "/openapi.json answered " + response.status + ": the API description is not available.";
    return;
  }
  const spec = await response.json();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const block = element("div", undefined, "endpoint");
      const title = element("h2");
      title.append(element("code", method.toUpperCase(), "method"), " ", element("code", path), " " +
        (operation.summary || ""));
      block.append(title);
      const content = operation.requestBody && operation.requestBody.content["application/json"];
      if (content) block.append(fieldsTable(spec, schemaOf(spec, content.schema)));
      block.append(element("pre", example(method, path)));
      section.append(block);
    }
  }
}

showEndpoints();
