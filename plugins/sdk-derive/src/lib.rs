//! `#[derive(Options)]`: a stage's or a PET type's options declared once, as the fields of
//! the struct the stage reads them into. Each field is an option: its name is the field's,
//! its help the field's doc comment, its type follows the field's Rust type, and
//! `#[option(...)]` adds the rest:
//!
//! - `default = EXPR`: the default (any `serde_json::json!` value: `8`, `"linear"`, `[]`,
//!   `{}`, `null`); without it the option is required, unless the field is an `Option<…>`
//!   (default null);
//! - `at_least`, `above`, `at_most`, `below = EXPR`: the range of its numbers;
//! - `choices = EXPR`: the strings it takes (`["a", "b"]` or a `&'static [&'static str]`);
//! - `ty = EXPR`: an [`OptType`] other than the field's type gives (paths, PET modules);
//! - `peer = "name"`: what PEFT or transformers call it (repeatable).
//!
//! A field marked `#[serde(flatten)]` brings in the options of another such struct. On the
//! struct, `#[options(one_of(a, b), exclusive(a, b), foreign(name = "hint"))]` declares
//! the checks that span options and the peer tools' options petnas has no counterpart of.
use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{quote, ToTokens};
use syn::punctuated::Punctuated;
use syn::{parse_macro_input, Data, DeriveInput, Expr, Fields, Ident, LitStr, Token};

#[proc_macro_derive(Options, attributes(option, options))]
pub fn derive_options(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(input, "Options is derived for a struct of options"));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new_spanned(input, "Options needs named fields, one per option"));
    };
    let mut steps = Vec::new();
    for field in &fields.named {
        steps.push(field_step(field)?);
    }
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("options")) {
        attr.parse_nested_meta(|meta| {
            let names = || -> syn::Result<Vec<String>> {
                let content;
                syn::parenthesized!(content in meta.input);
                let idents = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
                Ok(idents.iter().map(ToString::to_string).collect())
            };
            if meta.path.is_ident("one_of") {
                let names = names()?;
                steps.push(quote! { schema = schema.one_of(&[#(#names),*]); });
            } else if meta.path.is_ident("exclusive") {
                let names = names()?;
                steps.push(quote! { schema = schema.exclusive(&[#(#names),*]); });
            } else if meta.path.is_ident("foreign") {
                meta.parse_nested_meta(|foreign| {
                    let name = foreign.path.require_ident()?.to_string();
                    let hint: LitStr = foreign.value()?.parse()?;
                    steps.push(quote! { schema = schema.foreign(#name, #hint); });
                    Ok(())
                })?;
            } else {
                return Err(meta.error("expected one_of(...), exclusive(...) or foreign(name = \"hint\")"));
            }
            Ok(())
        })?;
    }
    let name = &input.ident;
    let (impl_generics, type_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::petnas_sdk::options::Options for #name #type_generics #where_clause {
            fn schema() -> ::petnas_sdk::options::OptionSchema {
                let mut schema = ::petnas_sdk::options::OptionSchema::new();
                #(#steps)*
                schema
            }
        }
    })
}

/// The field's doc comment, its lines joined by spaces.
fn doc_of(field: &syn::Field) -> String {
    let lines: Vec<String> = field
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    lines.join(" ").trim().to_string()
}

fn is_serde_flatten(field: &syn::Field) -> bool {
    field.attrs.iter().filter(|a| a.path().is_ident("serde")).any(|a| {
        let mut flatten = false;
        let _ = a.parse_nested_meta(|meta| {
            flatten |= meta.path.is_ident("flatten");
            if meta.input.peek(Token![=]) {
                meta.value()?.parse::<Expr>()?;
            }
            Ok(())
        });
        flatten
    })
}

/// Whether the field is an `Option<…>`: unset, it is null, so the option is never required.
fn is_option(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

/// The statement that adds the field's option (or, flattened, its struct's options).
fn field_step(field: &syn::Field) -> syn::Result<Tokens> {
    let ty = &field.ty;
    if is_serde_flatten(field) {
        return Ok(quote! {
            schema = schema.extend(<#ty as ::petnas_sdk::options::Options>::schema());
        });
    }
    let ident = field.ident.as_ref().expect("named fields");
    let name = ident.to_string().trim_start_matches("r#").to_string();
    let doc = doc_of(field);
    if doc.is_empty() {
        return Err(syn::Error::new_spanned(ident, "an option needs a doc comment: it is the option's help"));
    }
    let mut default = None;
    let mut bounds = Vec::new();
    let mut peers = Vec::new();
    let mut choices = None;
    let mut explicit_type = None;
    for attr in field.attrs.iter().filter(|a| a.path().is_ident("option")) {
        attr.parse_nested_meta(|meta| {
            let key = meta.path.require_ident()?.to_string();
            let value: Expr = meta.value()?.parse()?;
            match key.as_str() {
                "default" => default = Some(value),
                "at_least" | "above" | "at_most" | "below" => {
                    let method = Ident::new(&key, proc_macro2::Span::call_site());
                    bounds.push(quote! { .#method((#value) as f64) });
                }
                "peer" => peers.push(value),
                "choices" => {
                    choices = Some(match value {
                        Expr::Array(_) => quote! { &#value },
                        other => other.into_token_stream(),
                    })
                }
                "ty" => explicit_type = Some(value),
                _ => {
                    return Err(
                        meta.error("expected default, at_least, above, at_most, below, choices, ty or peer")
                    )
                }
            }
            Ok(())
        })?;
    }
    let value_trait = quote! { <#ty as ::petnas_sdk::options::OptionValue> };
    let mut opt_type = match explicit_type {
        Some(t) => t.into_token_stream(),
        None => quote! { #value_trait::opt_type() },
    };
    if let Some(choices) = choices {
        opt_type = quote! { #opt_type.with_choices(#choices) };
    }
    let default = match default {
        Some(value) => quote! { ::std::option::Option::Some(::petnas_sdk::serde_json::json!(#value)) },
        None if is_option(ty) => {
            quote! { ::std::option::Option::Some(::petnas_sdk::serde_json::Value::Null) }
        }
        None => quote! { ::std::option::Option::None },
    };
    Ok(quote! {
        schema = schema.declare(#name, #opt_type, #default, #doc) #(#bounds)* #(.peer_name(#peers))*;
    })
}
